#!/usr/bin/env bash
# Download Multi30k task 1 (raw, untokenized; en de fr cs; train/val/test_2016_flickr) into a
# folder, the layout nmt's data=multi30k_* configs expect. Needs network access.
#   scripts/fetch_multi30k.sh [DEST]      (default: ../shared/data/multi30k)
# Then either keep DEST at the default place or `export NMT_DATA_DIR=DEST`.
set -euo pipefail
dest=${1:-../shared/data/multi30k}
base=https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw
mkdir -p "$dest"
for split in train val test_2016_flickr; do
  for lang in en de fr cs; do
    file="$split.$lang.gz"
    if [ -s "$dest/$file" ]; then continue; fi
    echo "fetching $file"
    curl -fsSL --retry 3 -o "$dest/$file.part" "$base/$file"
    mv "$dest/$file.part" "$dest/$file"
  done
done
for split in train val test_2016_flickr; do
  echo "$split: $(gzip -dc "$dest/$split.en.gz" | wc -l) lines"
done
echo "Multi30k is in $dest (export NMT_DATA_DIR=$(cd "$dest" && pwd) if that is not the default)"
