#!/usr/bin/env bash
# Exercise variants (each bug of tests/find_the_bugs_helpers.py alone, the solution, the exercise as-is):
# full default runs in parallel on one GPU, from the repository root; .gpu/fmnist holds the four .gz files.
set -u
rm -rf /tmp/ftb
REPO=$(pwd)
export MPLBACKEND=Agg DATA_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
python -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python -c "import sys; sys.path.insert(0, '.'); from shared.data import fashion_mnist_root; print(fashion_mnist_root('.gpu/fmnist'))"
python - <<'PY'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "tests")
from find_the_bugs_helpers import BUGS, EXERCISE, SOLUTION, plant
variants = {"solution": [], **{n: [n] for n in BUGS}}
for i, (name, bugs) in enumerate(variants.items()):
    tmp = Path(f"/tmp/ftb/v{i}")
    folder = tmp / "exercises" / "find-the-bugs"
    shutil.copytree(EXERCISE, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__", "solution"))
    (tmp / "shared").symlink_to(Path("shared").resolve())
    (folder / "train.py").write_text(plant(SOLUTION.read_text(), bugs))
    (tmp / "NAME").write_text(name)
tmp = Path("/tmp/ftb/v_all/exercises/find-the-bugs")
shutil.copytree(EXERCISE, tmp, ignore=shutil.ignore_patterns("outputs", "__pycache__", "solution"))
(tmp.parents[1] / "shared").symlink_to(Path("shared").resolve())
(tmp.parents[1] / "NAME").write_text("exercise as-is (all eight bugs)")
PY
mkdir -p $OUT/ftb $OUT/pf
start=$(date +%s)
for d in /tmp/ftb/v*; do
  v=$(basename $d)
  (cd $d/exercises/find-the-bugs && python train.py --data-dir $REPO/.gpu/fmnist --out $OUT/ftb/$v > $OUT/ftb/$v.log 2>&1; echo "$v exit $?" >> $OUT/ftb/exits.txt) &
  mkdir -p $OUT/ftb/$v
done
wait
echo "parallel exercise runs: $(( $(date +%s) - start )) s"
for d in /tmp/ftb/v*; do v=$(basename $d); cp $d/NAME $OUT/ftb/$v/NAME; rm -f $OUT/ftb/$v/*.png $OUT/ftb/$v/*.pth; done
cat $OUT/ftb/exits.txt
cd $OUT && tar czf ftb_runs.tgz ftb && rm -rf ftb && ls -la $OUT
