"""Layer 2, files that know no module class: atomic writes, the safetensors and torch-zip readers, the
files of a PEFT adapter directory as bytes."""
