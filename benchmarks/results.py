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
