import subprocess
import sys

CODE = """
import sys
sys.modules['torch'] = None
sys.modules['torchvision'] = None
sys.modules['onnx'] = None
import harmonic.data, harmonic.data.readers, harmonic.data.synth, harmonic.data.dataset_file
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'onnx') and sys.modules[m] is not None)
assert not bad, bad
print('ok')
"""


def test_readers_synth_dataset_file_import_without_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
