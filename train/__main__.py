"""``python -m train``: one training process (the launcher starts these)."""

from train.main import main

if __name__ == "__main__":
    main()
