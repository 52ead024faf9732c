"""``python -m fraud_detection`` runs the ``fraud`` command line."""

from fraud_detection.cli import main

if __name__ == "__main__":
    main()
