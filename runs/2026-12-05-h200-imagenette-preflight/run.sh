#!/usr/bin/env bash
# imagenette v6a/v6b/v7a/v7b/v7c: --preflight (full budget, real data) on the GPU machine, with the
# battery of issue 26; plus two planted bugs on real data (training images shuffled once without
# their labels in load_data; the model left in eval() by the training epoch).
# Usage (repository root): bash runs/2026-12-05-h200-imagenette-preflight/run.sh WORK OUT
# (WORK: a scratch folder; OUT gets summary.txt and records.tar.gz: results.json and logs, no plots)
set -u
out=$1; dest=$2; mkdir -p $out $dest
data="--data-dir $(pwd)/.gpu/imagenette --train-fraction 1.0"
pre() {  # version seed name [extra flags]
  v=$1; s=$2; name=$3; shift 3
  (cd imagenette/$v && python train.py --preflight $data --seed $s --out $out/$name --overwrite "$@" \
     > $out/$name.log 2>&1; echo "$name exit $?" >> $out/exits.txt)
}
pre v6/v6a 0 v6a-seed0   # decodes the images into the cache first
for s in 1 2; do pre v6/v6a $s v6a-seed$s & done
for s in 0 1 2; do pre v7/v7a $s v7a-seed$s & done
pre v6/v6b 0 v6b-seed0 &
pre v7/v7b 0 v7b-seed0 &
pre v7/v7c 0 v7c-seed0 &
wait
# planted bugs, in copies of v6a and v7a
for v in v6/v6a v7/v7a; do
  n=$(basename $v)
  for bug in shuffled eval zeroinit; do
    mkdir -p /tmp/planted/$n-$bug/imagenette/v6 /tmp/planted/$n-$bug/imagenette/v7
    cp -r shared /tmp/planted/$n-$bug/; cp -r imagenette/$(dirname $v)/* /tmp/planted/$n-$bug/imagenette/$(dirname $v)/ 2>/dev/null
    f=/tmp/planted/$n-$bug/imagenette/$v/train.py
    if [ $bug = shuffled ]; then
      sed -i 's|    train_images = data.train_images.to(device)|    train_images = data.train_images[torch.randperm(len(data.train_images))].to(device)|' $f
    elif [ $bug = eval ]; then
      sed -i '0,/^    model.train()$/s//    model.eval()/' $f
    else  # legitimate: every residual branch's last BatchNorm scale starts at 0 (v7 only)
      [ $n = v6a ] && continue
      m=/tmp/planted/$n-$bug/imagenette/v7/models/resnet.py
      sed -i 's|^            nn.init.zeros_(self.fc.bias)$|            nn.init.zeros_(self.fc.bias)\n        for block in self.modules():\n            last_bn = getattr(block, "bn3", getattr(block, "bn2", None))\n            if isinstance(block, (BasicBlock, Bottleneck)) and last_bn is not None:\n                nn.init.zeros_(last_bn.weight)|' $m
      grep -c "nn.init.zeros_(last_bn.weight)" $m >> $out/planted_edits.txt
    fi
    grep -c "randperm(len(data.train_images))\|^    model.eval()$" $f >> $out/planted_edits.txt
    (cd /tmp/planted/$n-$bug/imagenette/$v && python train.py --preflight $data --seed 0 --out $out/$n-$bug \
       --overwrite > $out/$n-$bug.log 2>&1; echo "$n-$bug exit $?" >> $out/exits.txt) &
  done
done
wait
python runs/2026-12-05-h200-imagenette-preflight/summarize.py $out
cp $out/summary.txt $out/exits.txt $out/planted_edits.txt $dest/
find $out -name '*.png' -delete
tar czf $dest/records.tar.gz -C $out .
