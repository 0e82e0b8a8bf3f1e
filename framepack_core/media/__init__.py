"""Images in and video out: input checks, resolution buckets, previews, the mp4 writer and probe."""
