"""``python -m tasks.classification fit --config configs/classification/resnet20_sn.yaml`` (from the repository root)."""
from .cli import main

if __name__ == "__main__":
    main()
