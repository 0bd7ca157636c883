W=/tmp/screen; mkdir -p $W
run() { n=$1; shift; timeout 420 python .gpu/screen.py $n $W/$n "$@" > $W/$n.log 2>&1; }
run base --epochs 60 & run lr3 --epochs 60 --lr 3e-3 & run stem --epochs 60 & run stemlr3 --epochs 60 --lr 3e-3 & run wd05 --epochs 60 --weight-decay 0.05 &
wait
cd $W && tar czf $OUT/screen.tgz --exclude='*.pth' --exclude='*.png' .
for f in $W/*.log; do echo "$f $(grep -E 'best epoch|s per epoch|DeeperCNN' $f | tr '\n' ' ')"; done
