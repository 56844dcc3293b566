"""Where events go: CSV log, console and live view, clips, pictures, exports, MQTT, and the factory that builds
them from the user's options (outputs.py); summary.py reads the CSV logs back."""
