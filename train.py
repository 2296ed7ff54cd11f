"""Train musicgpt on a folder of MIDI: `python train.py --midi-dir DIR [--out runs/NAME]`.

Preprocesses the folder (cached in OUT/data), trains, validates and checkpoints to OUT/checkpoint.
Ctrl-C saves a checkpoint; `--resume` continues from it. Every Config field is a flag (--help).
Fine-tune the shipped model on your folder: `--init-from default` (or a checkpoint or run folder);
train for a time instead of steps: `--max-minutes M`.
Several GPUs: `torchrun --nproc_per_node N train.py --midi-dir DIR`.
"""

from musicgpt.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
