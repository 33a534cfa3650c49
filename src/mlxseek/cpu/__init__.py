"""What only MLX's CPU backend needs: the K-major quantized layout and the OpenBLAS binding."""
