"""One router per resource: downloads, jobs, callbacks (retry), stats, health."""
