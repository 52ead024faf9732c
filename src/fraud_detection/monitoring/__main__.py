"""``python -m fraud_detection.monitoring`` runs the drift monitor (``fraud monitor``)."""

from fraud_detection.monitor_cli import main

if __name__ == "__main__":
    main()
