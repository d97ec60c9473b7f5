"""jinja2 templates of contourqa's HTML reports (display only)."""
