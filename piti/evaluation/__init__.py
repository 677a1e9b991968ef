"""Evaluation: the toy-scale alignment check (a synthetic-world segmenter, mIoU) and FID-T."""

from piti.evaluation.metrics import confusion_matrix, feature_statistics, fid_t, frechet_distance, iou_from_confusion, miou
from piti.evaluation.segmenter import Segmenter, SegmenterConfig, load_segmenter, save_segmenter, train_segmenter

__all__ = [
    "confusion_matrix",
    "feature_statistics",
    "fid_t",
    "frechet_distance",
    "iou_from_confusion",
    "miou",
    "Segmenter",
    "SegmenterConfig",
    "load_segmenter",
    "save_segmenter",
    "train_segmenter",
]
