"""The app's job service over the shared queue and runner: live snapshots, queue management and the gallery."""
