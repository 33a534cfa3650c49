from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN_NAMES = ["v2_lite", "v3", "v3_fp8"]


def golden(name: str) -> dict:
    return dict(np.load(FIXTURES / name / "golden.npz"))


@pytest.fixture(params=GOLDEN_NAMES)
def fixture_name(request) -> str:
    return request.param
