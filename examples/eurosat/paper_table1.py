"""The paper's Table 1 and training protocol, transcribed once for the EuroSAT report.

Source: Shinde & Vuai, *Efficient land-cover image classification via mixed
bit-precision quantization*, Table 1 ("Model accuracy and Average bit-width
comparison for different DNN architectures at fixed and adaptive quantization")
and Section 3 ("Model Training and Evaluation Protocol", "Hyper-parameter
Settings"). Accuracies are in percent on the paper's own 80/20 stratified test
split; the search rows give the average bit-width (eq. 5) in brackets in the
paper. The paper does not say whether its VGG19 has batch normalisation, so its
VGG19 column is shown beside both torchvision's ``vgg19_bn`` and ``vgg19``.
"""

from __future__ import annotations

__all__ = ["PAPER_MODEL", "PAPER_TABLE1", "PAPER_PROTOCOL", "paper_row"]

#: Our torchvision model name -> the paper's column name in Table 1.
PAPER_MODEL = {"resnet18": "ResNet18", "resnet50": "ResNet50", "vgg19_bn": "VGG19", "vgg19": "VGG19"}

# Row keys are the ones the table script uses: "float", "fixed<b>",
# "search_fixed" (fixed T_margin = 0.5) and "search_adaptive" (adaptive, T_init = 0.5).
# Values: (test accuracy in %, average bits). Fixed rows have bits = b by construction.
PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "VGG19": {
        "float": (96.06, 32.0),
        "fixed8": (96.04, 8.0),
        "fixed7": (96.07, 7.0),
        "fixed6": (96.13, 6.0),
        "fixed5": (95.96, 5.0),
        "fixed4": (95.52, 4.0),
        "fixed3": (90.41, 3.0),
        "fixed2": (9.30, 2.0),
        "fixed1": (11.11, 1.0),
        "search_fixed": (95.78, 1.38),
        "search_adaptive": (96.06, 1.44),
    },
    "ResNet18": {
        "float": (94.78, 32.0),
        "fixed8": (94.70, 8.0),
        "fixed7": (94.67, 7.0),
        "fixed6": (94.63, 6.0),
        "fixed5": (94.43, 5.0),
        "fixed4": (90.09, 4.0),
        "fixed3": (63.93, 3.0),
        "fixed2": (9.41, 2.0),
        "fixed1": (9.26, 1.0),
        "search_fixed": (93.83, 3.73),
        "search_adaptive": (95.07, 3.43),
    },
    "ResNet50": {
        "float": (94.61, 32.0),
        "fixed8": (94.70, 8.0),
        "fixed7": (93.24, 7.0),
        "fixed6": (93.81, 6.0),
        "fixed5": (93.83, 5.0),
        "fixed4": (87.50, 4.0),
        "fixed3": (29.28, 3.0),
        "fixed2": (11.11, 2.0),
        "fixed1": (11.11, 1.0),
        "search_fixed": (93.74, 3.74),
        "search_adaptive": (94.44, 3.70),
    },
}

#: Section 3 of the paper, for the "deviations" list of the report.
PAPER_PROTOCOL = {
    "epochs": 120,
    "batch_size": 16,
    "optimizer": "SGD, momentum 0.9",
    "weight_decay": 1e-6,
    "lr": 0.001,
    "schedule": "ReduceLROnPlateau (factor 0.1, on validation loss)",
    "augmentation": "random flips, affine transformations, resizing",
    "split": "80/20 stratified train/test",
    "pretrained": False,
    "bands": "13-band Sentinel-2 described; the bands used for training are not stated",
    "t_init": 0.5,
    "edge_factor": 0.5,
    "w_p": 0.5,
    "w_v": 0.5,
    "baseline_bits": 8,
}


def paper_row(model: str, key: str) -> tuple[float, float] | None:
    """The paper's (accuracy %, average bits) for our ``model`` and row ``key``, if it has one."""
    column = PAPER_MODEL.get(model)
    if column is None:
        return None
    return PAPER_TABLE1[column].get(key)
