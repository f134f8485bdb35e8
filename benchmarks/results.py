"""Where benchmark results go: benchmarks/results/<name>.json, committed with the figures (README, docs/) they back."""
import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def save_result(name: str, result: dict) -> str:
    """Write `result` as benchmarks/results/<name>.json, print it, return the path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f'{name}.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return path


def save_tagged(name: str, tag: str, result: dict) -> str:
    """Put `result` under key `tag` of benchmarks/results/<name>.json (other tags kept; replaced atomically)."""
    path = os.path.join(RESULTS, f'{name}.json')
    saved = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
    saved[tag] = result
    with open(path + '.tmp', 'w') as f:
        json.dump(saved, f, indent=2)
    os.replace(path + '.tmp', path)
    print('wrote', path, flush=True)
    return path
