"""Small helpers shared by every layer: seeds, atomic files, safetensors I/O."""
