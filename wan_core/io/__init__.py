"""The bottom layer, with no model knowledge: reading tensor files safely (`tensor_files`), parameter
name ordering and key checks (`keys`), dtype names and fp8 quantization (`dtypes`), atomic writes
(`write`)."""
