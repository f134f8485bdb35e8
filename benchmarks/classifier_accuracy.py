"""Test accuracy of the offline quality metric's classifier (metrics/classifier.py) on the real test splits.

    python benchmarks/classifier_accuracy.py --fashion_mnist <IDX folder> --mnist <IDX folder>   # ~5 min, 2 cores

The classifier is trained exactly as evaluation trains it (evaluation/quality.py, on the training split as the data
pipeline delivers it, 32 px after padding), then scored on the 10,000 test images.
Results: benchmarks/results/classifier_accuracy.json.
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from results import save_result  # noqa: E402

from configs import fashion_mnist  # noqa: E402
from subspace_diffusion.evaluation.quality import CLASSIFIERS, ClassifierFeatures  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--fashion_mnist', required=True, help='folder of the Fashion-MNIST IDX files')
    parser.add_argument('--mnist', required=True, help='folder of the MNIST IDX files')
    args = parser.parse_args()
    result = {'command': 'python benchmarks/classifier_accuracy.py --fashion_mnist <folder> --mnist <folder>'}
    for name, folder in (('fashion_mnist', args.fashion_mnist), ('mnist', args.mnist)):
        config = fashion_mnist.get_config()
        config.data.dataset, config.data.data_dir = name, folder
        settings = Settings.from_config(config)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            accuracy = ClassifierFeatures(settings, workdir).test_accuracy
        spec = CLASSIFIERS[settings.data.dataset]
        result[name] = {'test_accuracy': accuracy, 'train_s': time.perf_counter() - start, 'steps': spec.steps,
                        'batch': spec.batch_size, 'kind': spec.kind}
        print(name, result[name], flush=True)
    save_result('classifier_accuracy', result)


if __name__ == '__main__':
    main()
