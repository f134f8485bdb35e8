"""Progress reporting for long jobs: durations as people read them."""


def fmt_duration(seconds: float) -> str:
    """Seconds -> '4m05s', or '2h07m' from an hour on."""
    seconds = int(seconds)
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'
