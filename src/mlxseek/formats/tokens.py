"""DeepSeek's special tokens as they appear in prompt and reply text (all present in the real tokenizer.json)."""

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
SYSTEM = "<｜System｜>"  # V4.1 only (its tokenizer's id 128799, a placeholder in earlier tokenizers)
THINK_START = "<think>"
THINK_END = "</think>"

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
OUTPUTS_BEGIN = "<｜tool▁outputs▁begin｜>"
OUTPUTS_END = "<｜tool▁outputs▁end｜>"
OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
OUTPUT_END = "<｜tool▁output▁end｜>"

DSML = "｜DSML｜"
LATEST_REMINDER = "<｜latest_reminder｜>"

# Every special token text a reply may carry: a partial one at the end of a delta is held back.
SPECIAL_TEXTS = (BOS, EOS, USER, ASSISTANT, SYSTEM, THINK_START, THINK_END, CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END,
                 TOOL_SEP, OUTPUTS_BEGIN, OUTPUTS_END, OUTPUT_BEGIN, OUTPUT_END, LATEST_REMINDER,
                 f"<{DSML}", f"</{DSML}")
