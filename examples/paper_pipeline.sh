#!/usr/bin/env bash
# The pipeline of Quinton et al. 2026 (ATLAS liver MRI, box-annotated LLD-MMRI, diffusion-inpainted synthetic
# tumours) with nnU-Net and nnunetv2-tumorsynth: every step is the real command with the paper's settings.
#
#   export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...
#   ATLAS_SRC=/data/ATLAS LLD_ROOT=/data/LLD-MMRI bash examples/paper_pipeline.sh
#   DRY_RUN=1 bash examples/paper_pipeline.sh                     # print the commands, run nothing
#   STEPS="train_baseline predict evaluate" bash examples/...     # only these steps (names below)
#
# Steps (STEPS=all runs them in this order):
#   convert_atlas    ATLAS release -> Dataset501_ATLAS, splits_final.json fold 0 = the paper's 48 / 12 split
#   check_lld        what tumorsynth_pseudolabel will read from LLD-MMRI; JSON spacing vs NIfTI header
#   plan_atlas       nnUNetv2_plan_and_preprocess (+ tumorsynth_tiny_plans with TINY_PLANS=1)
#   train_box        box-guided nnU-Net on ATLAS (nnUNetTrainerBBoxChannel, section 2.1)
#   pseudolabel      LLD-MMRI HCC series (category 6), phases C+A C+V C+Delay -> Dataset502 pseudo-masks
#   preprocess_lld   Dataset502 preprocessed with ATLAS's plans (nnUNetv2_move_plans_between_datasets) so the
#                    two datasets can be pooled
#   pretrain_ddpm    the diffusion model on ATLAS + LLD-MMRI tumours, paper preset, 5000 epochs (section 2.3)
#   train_baseline   plain nnU-Net on ATLAS (the baseline)
#   train_synth      nnU-Net with on-the-fly synthetic tumours (nnUNetTrainerSynthTumor)      [arm onthefly]
#   generate         1000 synthetic images, 250 DDIM steps, + real images -> Dataset503       [arm offline]
#   preprocess_synth Dataset503 preprocessed with ATLAS's plans                               [arm offline]
#   train_offline    plain nnU-Net on Dataset503, fold "all" (all 48 real + 1000 synthetic)  [arm offline]
#   predict          every model on the ATLAS test images (imagesTs)
#   evaluate         tumorsynth_evaluate of each arm against the baseline, tumour label
#
# Expected GPU time, one H100 SXM (989 TFLOP/s dense bf16), from our FLOP counts (torch FlopCounterMode on
# the meta device, benchmarks/bench_ddpm.py). "Bound" = FLOPs / peak: a real run is slower by 1 / utilisation,
# typically 2-3x for 3D convolutions; measure with `python benchmarks/bench_ddpm.py --device cuda`.
#   - DDPM, paper preset (862 M parameters), crop 64 x 96 x 128 voxels (z, y, x): forward 30.1 TFLOP,
#     training iteration (forward + backward, batch 1) 90.2 TFLOP = 91 ms bound.
#   - nnU-Net 3d_fullres: ASSUMED plan (the real one depends on ATLAS's spacing): PlainConvUNet, 6 stages,
#     32-320 features, patch 64 x 192 x 192, batch 2 -> 7.6 TFLOP per training iteration, 1.26 TFLOP per
#     sliding-window patch. 1000 epochs x 250 iterations -> 0.5 h bound; nnU-Net is limited by CPU data
#     augmentation rather than FLOPs, so we ASSUME ~60 s per epoch, ~17 h per training (not measured).
#   - Tumour counts: ATLAS ~2.3 tumours per training image (Quinton et al. 2026, section 4) -> ~110 in the
#     48 training images; LLD-MMRI ASSUMED 1 annotated lesion per series -> ~240 in fold 0's 240 of 300 series.
#
# Environment variables (defaults in brackets) make every part replaceable, e.g. by a small phantom
# stand-in on the CPU (see tests/test_examples.py):
#   ATLAS_SRC [/data/ATLAS]  ATLAS_TEST_SRC []  LLD_ROOT [/data/LLD-MMRI]  LLD_ANNOTATION  LLD_IMAGES
#   WORK [paper_pipeline]: predictions, reports, LLD-MMRI check and pseudo-labels
#   ATLAS_ID [501]  ATLAS_NAME [ATLAS]  LLD_ID [502]  SYNTH_ID [503]  CONFIG [3d_fullres]  FOLD [0]
#   PLANS [nnUNetPlans, or tumorsynthTinyPlans with TINY_PLANS=1]  TINY_PLANS [0]: CPU-sized plans
#   TR_BASELINE [nnUNetTrainer]  TR_BOX [nnUNetTrainerBBoxChannel]  TR_SYNTH [nnUNetTrainerSynthTumor]
#   PHASES [C+A C+V C+Delay]  CATEGORIES [6]  DDPM_DATASETS [$ATLAS_ID $LLD_ID]  DDPM_PRESET [paper]
#   DDPM_EPOCHS [5000]  N_SYNTH [1000]  DDIM_STEPS [250]  DEVICE [cuda]  NP []: nnU-Net processes
#   ARMS [onthefly offline]  STEPS [all]  DRY_RUN [0]  OVERWRITE [0]  PYTHON [python3]
#   TRAIN_EXTRA  PREDICT_EXTRA (also tumorsynth_pseudolabel)  DDPM_EXTRA  GENERATE_EXTRA: extra flags
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
STEPS=${STEPS:-all}
ARMS=${ARMS:-onthefly offline}
OVERWRITE=${OVERWRITE:-0}

ATLAS_SRC=${ATLAS_SRC:-/data/ATLAS}
ATLAS_TEST_SRC=${ATLAS_TEST_SRC:-}
LLD_ROOT=${LLD_ROOT:-/data/LLD-MMRI}
LLD_ANNOTATION=${LLD_ANNOTATION:-$LLD_ROOT/labels/Annotation.json}
LLD_IMAGES=${LLD_IMAGES:-$LLD_ROOT/images}
WORK=${WORK:-paper_pipeline}

ATLAS_ID=${ATLAS_ID:-501}
ATLAS_NAME=${ATLAS_NAME:-ATLAS}
LLD_ID=${LLD_ID:-502}
SYNTH_ID=${SYNTH_ID:-503}
CONFIG=${CONFIG:-3d_fullres}
FOLD=${FOLD:-0}
TINY_PLANS=${TINY_PLANS:-0}
if [ "$TINY_PLANS" = 1 ]; then PLANS=${PLANS:-tumorsynthTinyPlans}; else PLANS=${PLANS:-nnUNetPlans}; fi
TR_BASELINE=${TR_BASELINE:-nnUNetTrainer}
TR_BOX=${TR_BOX:-nnUNetTrainerBBoxChannel}
TR_SYNTH=${TR_SYNTH:-nnUNetTrainerSynthTumor}
DDPM_PRESET=${DDPM_PRESET:-paper}
DDPM_EPOCHS=${DDPM_EPOCHS:-5000}
N_SYNTH=${N_SYNTH:-1000}
DDIM_STEPS=${DDIM_STEPS:-250}
DEVICE=${DEVICE:-cuda}
NP=${NP:-}

# lists given as space-separated strings
read -r -a PHASES_A <<< "${PHASES:-C+A C+V C+Delay}"
read -r -a CATEGORIES_A <<< "${CATEGORIES:-6}"
read -r -a DDPM_DATASETS_A <<< "${DDPM_DATASETS:-$ATLAS_ID $LLD_ID}"
read -r -a TRAIN_EXTRA_A <<< "${TRAIN_EXTRA:-}"
read -r -a PREDICT_EXTRA_A <<< "${PREDICT_EXTRA:-}"
read -r -a DDPM_EXTRA_A <<< "${DDPM_EXTRA:-}"
read -r -a GENERATE_EXTRA_A <<< "${GENERATE_EXTRA:-}"
NP_A=(); if [ -n "$NP" ]; then NP_A=(-np "$NP"); fi
OVERWRITE_A=(); if [ "$OVERWRITE" = 1 ]; then OVERWRITE_A=(--overwrite); fi

ALL_STEPS="convert_atlas check_lld plan_atlas train_box pseudolabel preprocess_lld pretrain_ddpm train_baseline
train_synth generate preprocess_synth train_offline predict evaluate"
for name in $STEPS; do
    case " all $(echo $ALL_STEPS) " in
        *" $name "*) ;;
        *) echo "paper_pipeline.sh: unknown step '$name' in STEPS; steps: $(echo $ALL_STEPS)" >&2; exit 1 ;;
    esac
done
for name in $ARMS; do
    case "$name" in onthefly | offline) ;; *) echo "paper_pipeline.sh: unknown arm '$name' in ARMS (onthefly offline)" >&2; exit 1 ;; esac
done

run() {  # print the command as a user would type it, then run it (not with DRY_RUN=1)
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}

step() {  # step NAME "expected time": true when NAME is selected by STEPS; prints a banner
    case " $STEPS " in
        *" all "* | *" $1 "*) echo "== $1 (expected: $2)" ;;
        *) return 1 ;;
    esac
}

arm() {  # arm NAME: true when NAME is among ARMS
    case " $ARMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

if [ "$DRY_RUN" = 1 ]; then
    nnUNet_raw=${nnUNet_raw:-'$nnUNet_raw'}
    echo '# eval "$(tumorsynth_env)"   (lets nnU-Net find the tumorsynth trainers)'
else
    for var in nnUNet_raw nnUNet_preprocessed nnUNet_results; do
        if [ -z "${!var:-}" ]; then echo "paper_pipeline.sh: set $var (nnU-Net's folders) first" >&2; exit 1; fi
    done
    eval "$(tumorsynth_env)"
fi
RAW_ATLAS="$nnUNet_raw/Dataset$(printf '%03d' "$ATLAS_ID")_$ATLAS_NAME"
TEST_IMAGES=${TEST_IMAGES:-$RAW_ATLAS/imagesTs}
TEST_LABELS=${TEST_LABELS:-$RAW_ATLAS/labelsTs}

# --- data -------------------------------------------------------------------------------------------------
if step convert_atlas "CPU only, a few minutes: copies and checks 90 images"; then
    TEST_A=(); if [ -n "$ATLAS_TEST_SRC" ]; then TEST_A=(--test-input "$ATLAS_TEST_SRC"); fi
    run "$PYTHON" "$HERE/convert_atlas.py" -i "$ATLAS_SRC" -d "$ATLAS_ID" --name "$ATLAS_NAME" \
        ${TEST_A[@]+"${TEST_A[@]}"} ${OVERWRITE_A[@]+"${OVERWRITE_A[@]}"}
fi

if step check_lld "CPU only, about a minute: reads headers only"; then
    run "$PYTHON" "$HERE/check_lld_mmri.py" -bbox "$LLD_ANNOTATION" -i "$LLD_IMAGES" --phases "${PHASES_A[@]}" \
        --categories "${CATEGORIES_A[@]}" -o "$WORK/lld_mmri_check.json"
fi

if step plan_atlas "CPU only, 10-30 min (fingerprint, plans, preprocessing of 60 images)"; then
    NPP_A=(); if [ -n "$NP" ]; then NPP_A=(-npfp "$NP" -np "$NP"); fi
    run nnUNetv2_plan_and_preprocess -d "$ATLAS_ID" -c "$CONFIG" --verify_dataset_integrity \
        ${NPP_A[@]+"${NPP_A[@]}"}
    if [ "$TINY_PLANS" = 1 ]; then
        run tumorsynth_tiny_plans -d "$ATLAS_ID" -c "$CONFIG" -o "$PLANS"
    fi
fi

# --- box-guided pseudo-labels for LLD-MMRI (section 2.1) -------------------------------------------------
if step train_box "as plain nnU-Net: 0.5 h bound, ~17 h assumed (1000 epochs x 250 iterations)"; then
    run nnUNetv2_train "$ATLAS_ID" "$CONFIG" "$FOLD" -tr "$TR_BOX" -p "$PLANS" -device "$DEVICE" \
        ${TRAIN_EXTRA_A[@]+"${TRAIN_EXTRA_A[@]}"}
fi

if step pseudolabel "~1 min bound (300 series x ~20 patches x 8 mirrorings x 1.26 TFLOP); CPU resampling dominates, ~1 h"; then
    run tumorsynth_pseudolabel -bbox "$LLD_ANNOTATION" -i "$LLD_IMAGES" -o "$WORK/lld_pseudolabels" \
        -d "$ATLAS_ID" -c "$CONFIG" -f "$FOLD" -tr "$TR_BOX" -p "$PLANS" --phases "${PHASES_A[@]}" \
        --categories "${CATEGORIES_A[@]}" --as-dataset "$LLD_ID" -device "$DEVICE" \
        ${PREDICT_EXTRA_A[@]+"${PREDICT_EXTRA_A[@]}"} ${OVERWRITE_A[@]+"${OVERWRITE_A[@]}"}
fi

if step preprocess_lld "CPU only, 10-30 min (300 images)"; then
    run nnUNetv2_extract_fingerprint -d "$LLD_ID" --verify_dataset_integrity ${NP_A[@]+"${NP_A[@]}"}
    run nnUNetv2_move_plans_between_datasets -s "$ATLAS_ID" -t "$LLD_ID" -sp "$PLANS" -tp "$PLANS"
    run nnUNetv2_preprocess -d "$LLD_ID" -plans_name "$PLANS" -c "$CONFIG" ${NP_A[@]+"${NP_A[@]}"}
fi

# --- the diffusion model (sections 2.2-2.3) --------------------------------------------------------------
# 5000 epochs x (~100 ATLAS + ~215 LLD-MMRI training tumours) x 90.2 TFLOP, plus the validation loss
# (~35 held-out tumours x 4 timesteps x 30.1 TFLOP per epoch): ~46 h bound; ATLAS alone (DDPM_DATASETS=501):
# ~14 h bound. Several GPUs: torchrun --nproc_per_node N $(which tumorsynth_pretrain_ddpm) ...
if step pretrain_ddpm "~46 h bound for ATLAS + LLD-MMRI (2-3x that in practice), see above"; then
    run tumorsynth_pretrain_ddpm -d "${DDPM_DATASETS_A[@]}" -c "$CONFIG" -f "$FOLD" -p "$PLANS" \
        --preset "$DDPM_PRESET" --epochs "$DDPM_EPOCHS" -device "$DEVICE" \
        ${DDPM_EXTRA_A[@]+"${DDPM_EXTRA_A[@]}"}
fi

# --- segmentation: baseline and the two ways of adding synthetic tumours (sections 2.6-2.7) -------------
if step train_baseline "0.5 h bound, ~17 h assumed (1000 epochs x 250 iterations, batch 2)"; then
    run nnUNetv2_train "$ATLAS_ID" "$CONFIG" "$FOLD" -tr "$TR_BASELINE" -p "$PLANS" -device "$DEVICE" \
        ${TRAIN_EXTRA_A[@]+"${TRAIN_EXTRA_A[@]}"}
fi

# the synthesis bank makes ceil(250 x 2 x 0.5 / 10) = 25 tumours per epoch at 5 DPM-Solver++(2M) steps (the
# trainers' default) x 30.1 TFLOP: 3.8 s per epoch bound, 1.1 h over 1000 epochs, beside training on the GPU's
# idle time (the paper's DDIM 50 would be 10x that: 10.6 h)
if arm onthefly && step train_synth "training as the baseline + 1.1 h bound of diffusion sampling"; then
    run nnUNetv2_train "$ATLAS_ID" "$CONFIG" "$FOLD" -tr "$TR_SYNTH" -p "$PLANS" -device "$DEVICE" \
        ${TRAIN_EXTRA_A[@]+"${TRAIN_EXTRA_A[@]}"}
fi

# 1000 images x 250 DDIM steps x 30.1 TFLOP = 7.5 EFLOP
if arm offline && step generate "2.1 h bound (1000 images x 250 DDIM steps)"; then
    run tumorsynth_generate -d "$ATLAS_ID" -c "$CONFIG" -f "$FOLD" -p "$PLANS" -n "$N_SYNTH" --steps "$DDIM_STEPS" \
        --sampler ddim --deformation simplex --include-real --as-dataset "$SYNTH_ID" -device "$DEVICE" \
        ${GENERATE_EXTRA_A[@]+"${GENERATE_EXTRA_A[@]}"} ${OVERWRITE_A[@]+"${OVERWRITE_A[@]}"}
fi

if arm offline && step preprocess_synth "CPU only, ~1 h (1048 images)"; then
    run nnUNetv2_extract_fingerprint -d "$SYNTH_ID" --verify_dataset_integrity ${NP_A[@]+"${NP_A[@]}"}
    run nnUNetv2_move_plans_between_datasets -s "$ATLAS_ID" -t "$SYNTH_ID" -sp "$PLANS" -tp "$PLANS"
    run nnUNetv2_preprocess -d "$SYNTH_ID" -plans_name "$PLANS" -c "$CONFIG" ${NP_A[@]+"${NP_A[@]}"}
fi

# fold "all": Dataset503 holds only fold 0's 48 training images (+ their synthetic copies), so training on
# all of it is the paper's setting; its validation images are not in it
if arm offline && step train_offline "as the baseline: 0.5 h bound, ~17 h assumed"; then
    run nnUNetv2_train "$SYNTH_ID" "$CONFIG" all -tr "$TR_BASELINE" -p "$PLANS" -device "$DEVICE" \
        ${TRAIN_EXTRA_A[@]+"${TRAIN_EXTRA_A[@]}"}
fi

# --- test set ----------------------------------------------------------------------------------------------
if step predict "seconds bound (30 images x ~20 patches x 8 mirrorings x 1.26 TFLOP); minutes with export"; then
    run nnUNetv2_predict -i "$TEST_IMAGES" -o "$WORK/pred_baseline" -d "$ATLAS_ID" -c "$CONFIG" -f "$FOLD" \
        -tr "$TR_BASELINE" -p "$PLANS" -device "$DEVICE" ${PREDICT_EXTRA_A[@]+"${PREDICT_EXTRA_A[@]}"}
    if arm onthefly; then
        run nnUNetv2_predict -i "$TEST_IMAGES" -o "$WORK/pred_onthefly" -d "$ATLAS_ID" -c "$CONFIG" -f "$FOLD" \
            -tr "$TR_SYNTH" -p "$PLANS" -device "$DEVICE" ${PREDICT_EXTRA_A[@]+"${PREDICT_EXTRA_A[@]}"}
    fi
    if arm offline; then
        run nnUNetv2_predict -i "$TEST_IMAGES" -o "$WORK/pred_offline" -d "$SYNTH_ID" -c "$CONFIG" -f all \
            -tr "$TR_BASELINE" -p "$PLANS" -device "$DEVICE" ${PREDICT_EXTRA_A[@]+"${PREDICT_EXTRA_A[@]}"}
    fi
fi

if step evaluate "CPU only, minutes"; then
    for name in onthefly offline; do
        if arm "$name"; then
            run tumorsynth_evaluate -ref "$TEST_LABELS" -pred "$WORK/pred_$name" -baseline "$WORK/pred_baseline" \
                -l tumour -o "$WORK/report_$name" ${OVERWRITE_A[@]+"${OVERWRITE_A[@]}"}
        fi
    done
    echo "reports: $WORK/report_*/report.md"
fi
