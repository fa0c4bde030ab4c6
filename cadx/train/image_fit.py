"""Train a 2D image classifier (seed 002): augmentation, weight decay, class weighting, early
stopping on validation AUC. The network comes from `cadx.models.backbones`.

Three tasks share the loop: "binary" (one logit, sigmoid, e.g. benign vs malignant),
"multiclass" (K logits, softmax, e.g. the image category of a triage router) and "multilabel"
(K logits, one sigmoid each, e.g. quality-control flags). The validation AUC is the macro
one-vs-rest AUC for multiclass and the mean of the per-label AUCs for multilabel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from sklearn.metrics import roc_auc_score

from cadx.config import ImageTrainConfig
from cadx.errors import ConfigError, SplitError
from cadx.train.augment import augment_batch, augment_batch_with_masks, image_augmentation
from cadx.train.fit import EarlyStopping, epoch_progress
from cadx.train.precision import autocast, resolve_precision


@dataclass
class ImageTrainingHistory:
    """Per-epoch training loss, validation AUC and validation log loss; the epoch whose model
    was kept."""

    train_loss: list[float] = field(default_factory=list)
    validation_auc: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    # The lesion-mask segmentation loss per epoch (lesion-mask guidance only).
    lesion_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_validation_auc: float = 0.0
    stopped_early: bool = False


TASKS = ("binary", "multiclass", "multilabel")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown training task {task!r}; one of {', '.join(TASKS)}")


def _check_labels(labels: np.ndarray, task: str, name: str, n_classes: int) -> None:
    """SplitError unless every class (binary, multiclass) or both values of every label
    (multilabel) occur: an AUC needs positives and negatives."""
    if task == "binary":
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == len(labels):
            raise SplitError(f"{name} images are all of one class ({len(labels)} images); "
                             "need benign and malignant")
    elif task == "multiclass":
        missing = sorted(set(range(n_classes)) - set(labels.tolist()))
        if missing:
            raise SplitError(f"{name} images ({len(labels)}) hold no image of class(es) "
                             f"{missing}; every class is needed")
    else:
        n_pos = labels.sum(axis=0)
        constant = np.flatnonzero((n_pos == 0) | (n_pos == len(labels))).tolist()
        if constant:
            raise SplitError(f"{name} images ({len(labels)}) have label column(s) {constant} "
                             "all 0 or all 1; every label needs both values")


def _probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    if task == "binary":
        return torch.sigmoid(logits.reshape(-1))
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


@torch.inference_mode()
def predict_image_probabilities(model: torch.nn.Module, images: np.ndarray,
                                batch_size: int = 32, task: str = "binary") -> np.ndarray:
    """Probabilities of each (C, H, W) image, batched, model in eval mode: (N,) of the
    positive class for "binary", (N, K) softmax for "multiclass", (N, K) sigmoids for
    "multilabel"."""
    _check_task(task)
    was_training = model.training
    model.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    logits = [model(tensor[i:i + batch_size]) for i in range(0, len(tensor), batch_size)]
    model.train(was_training)
    if not logits:
        return np.zeros(0)
    return _probabilities(torch.cat(logits), task).numpy().astype(np.float64)


def validation_auc(labels: np.ndarray, probabilities: np.ndarray, task: str) -> float:
    """ROC AUC for "binary", macro one-vs-rest AUC for "multiclass", mean per-label AUC for
    "multilabel"."""
    _check_task(task)
    if task == "multiclass":
        return float(roc_auc_score(labels, probabilities, multi_class="ovr",
                                   labels=np.arange(probabilities.shape[1])))
    return float(roc_auc_score(labels, probabilities, average="macro"))


def validation_log_loss(labels: np.ndarray, probabilities: np.ndarray, task: str) -> float:
    """Mean unweighted cross-entropy of the probabilities: over images for "binary" and
    "multiclass", over images and labels for "multilabel"."""
    _check_task(task)
    p = np.clip(probabilities, 1e-7, 1.0 - 1e-7)
    if task == "multiclass":
        return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def _loss(task: str, labels: np.ndarray, n_classes: int) -> Loss:
    """The training loss with class weighting: positives weighted by n_negative / n_positive
    (binary, and per label for multilabel); classes by n / (K * n_class) (multiclass)."""
    if task == "multiclass":
        counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
        weight = torch.from_numpy(len(labels) / (n_classes * counts))
        return lambda logits, target: F.cross_entropy(logits, target, weight=weight)
    n_pos = labels.sum(axis=0).astype(np.float32)
    pos_weight = torch.as_tensor((len(labels) - n_pos) / n_pos)
    if task == "binary":
        return lambda logits, target: F.binary_cross_entropy_with_logits(
            logits.reshape(-1), target, pos_weight=pos_weight)
    return lambda logits, target: F.binary_cross_entropy_with_logits(logits, target,
                                                                      pos_weight=pos_weight)


class _LesionGuidance:
    """The lesion-mask segmentation loss of one layer's map: a forward hook keeps the map, a
    1x1 convolution (trained with the network, not stored with it) turns it into lesion
    logits, compared by BCE with each mask's area fraction per map cell."""

    def __init__(self, model: torch.nn.Module, layer: str, probe: torch.Tensor) -> None:
        self._map: torch.Tensor | None = None
        self._hook = model.get_submodule(layer).register_forward_hook(self._keep)
        with torch.no_grad():
            model.eval()
            model(probe)
        self.head = torch.nn.Conv2d(self._map.shape[1], 1, kernel_size=1)

    def _keep(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._map = output

    def loss(self, masks: torch.Tensor) -> torch.Tensor:
        """Mean BCE over the images whose mask is not NaN (0 when none has one)."""
        has = ~torch.isnan(masks.flatten(1)[:, 0])
        if not has.any():
            return torch.zeros(())
        logits = self.head(self._map[has]).float()
        target = F.adaptive_avg_pool2d(masks[has][:, None], logits.shape[-2:])
        return F.binary_cross_entropy_with_logits(logits, target)

    def remove(self) -> None:
        self._hook.remove()


def _augment_guided(batch: torch.Tensor, masks: torch.Tensor,
                    pipeline: Compose) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images with masks; an image without one (NaN) keeps a NaN mask."""
    missing = torch.isnan(masks.flatten(1)[:, 0])
    batch, augmented = augment_batch_with_masks(batch, torch.nan_to_num(masks), pipeline)
    augmented[missing] = float("nan")
    return batch, augmented


def fit_image_model(model: torch.nn.Module, train_images: np.ndarray, train_labels: np.ndarray,
                    validation_images: np.ndarray, validation_labels: np.ndarray,
                    config: ImageTrainConfig, *, task: str = "binary", monitor: str = "auc",
                    lesion_masks: np.ndarray | None = None, lesion_layer: str | None = None,
                    progress: bool = True) -> tuple[torch.nn.Module, ImageTrainingHistory]:
    """Train `model` and return it at its best validation AUC (`monitor` "auc") or lowest
    validation log loss ("loss": for a router, whose AUC reaches 1 long before its
    probabilities are confident).

    Labels: (N,) 0/1 for "binary" (one logit per image), (N,) class indices 0..K-1 for
    "multiclass" and (N, K) 0/1 for "multilabel" (K logits per image).

    With `config.lesion_mask_weight` > 0, `lesion_masks` ((N, H, W) in 0..1 at the images'
    size, all-NaN for an image without a mask) and `lesion_layer` (the module whose map is
    guided, e.g. `cadx.models.backbones.cam_layer`) add the weighted lesion segmentation loss
    of `_LesionGuidance`; the masks follow the images through augmentation. The returned
    network is the same as without guidance, only its weights differ.
    """
    _check_task(task)
    if monitor not in ("auc", "loss"):
        raise ConfigError(f"monitor must be 'auc' or 'loss', got {monitor!r}")
    train_labels = np.asarray(train_labels).astype(int)
    validation_labels = np.asarray(validation_labels).astype(int)
    n_classes = int(np.prod(predict_image_probabilities(model, validation_images[:1],
                                                        task=task).shape[1:]))
    if (task == "binary") != (n_classes == 1):
        need = "one logit" if task == "binary" else "one logit per class or label"
        raise ConfigError(f"a {task} model needs {need}; this one has {n_classes}")
    _check_labels(train_labels, task, "training", n_classes)
    _check_labels(validation_labels, task, "validation", n_classes)
    guided = config.lesion_mask_weight > 0
    if guided and (lesion_masks is None or lesion_layer is None
                   or lesion_masks.shape != (len(train_images), *train_images.shape[2:])):
        raise ConfigError("lesion-mask guidance needs one mask per training image at the "
                          "images' size and the layer to guide")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    precision = resolve_precision(config.precision)
    pipeline = image_augmentation(train_images.shape[-1], config.seed, config.vertical_flip)
    loss_of = _loss(task, train_labels, n_classes)
    guidance = (_LesionGuidance(model, lesion_layer,
                                torch.from_numpy(validation_images[:1].astype(np.float32)))
                if guided else None)
    # Frozen parameters (early blocks of a pretrained network) are left out.
    trained = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(
        trained + (list(guidance.head.parameters()) if guidance else []),
        lr=config.learning_rate, weight_decay=config.weight_decay)
    # Full batches, and a last partial one unless it is a single image (skipped below).
    steps_per_epoch = (len(train_images) // config.batch_size
                       + (len(train_images) % config.batch_size >= 2))
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, pct_start=0.15,
        total_steps=max(config.max_epochs * steps_per_epoch, 1))
        if config.schedule == "onecycle" else None)
    x_train = torch.from_numpy(np.ascontiguousarray(train_images, dtype=np.float32))
    y_train = torch.from_numpy(train_labels if task == "multiclass"
                               else train_labels.astype(np.float32))
    m_train = (torch.from_numpy(np.ascontiguousarray(lesion_masks, dtype=np.float32))
               if guided else None)
    history = ImageTrainingHistory()
    stopper = EarlyStopping(config.early_stop_patience, mode="max" if monitor == "auc" else "min")
    with epoch_progress(progress) as bar:
        bar_task = bar.add_task("epochs", total=config.max_epochs, status="")
        for epoch in range(config.max_epochs):
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            total, lesion_total = 0.0, 0.0
            for start in range(0, len(order), config.batch_size):
                index = order[start:start + config.batch_size]
                if len(index) < 2:  # BatchNorm cannot train on a single image
                    continue
                batch = x_train[index]
                masks = m_train[index] if guided else None
                if config.augment and guided:
                    batch, masks = _augment_guided(batch, masks, pipeline)
                elif config.augment:
                    batch = augment_batch(batch, pipeline)
                optimiser.zero_grad(set_to_none=True)
                with autocast(precision):
                    logits = model(batch)
                    lesion = guidance.loss(masks) if guided else None
                loss = loss_of(logits.float(), y_train[index])
                if guided:
                    lesion_total += float(lesion.detach()) * len(index)
                    loss = loss + config.lesion_mask_weight * lesion.float()
                loss.backward()
                optimiser.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(index)
            scores = predict_image_probabilities(model, validation_images, task=task)
            auc = validation_auc(validation_labels, scores, task)
            validation_loss = validation_log_loss(validation_labels, scores, task)
            history.train_loss.append(total / len(x_train))
            if guided:
                history.lesion_loss.append(lesion_total / len(x_train))
            history.validation_auc.append(auc)
            history.validation_loss.append(validation_loss)
            stop = stopper.update(auc if monitor == "auc" else validation_loss, epoch, model)
            bar.update(bar_task, advance=1, status=f"loss {history.train_loss[-1]:.3f} "
                                                   f"val AUC {auc:.3f} val loss "
                                                   f"{validation_loss:.3f}")
            if stop:
                history.stopped_early = True
                break
    if guidance is not None:
        guidance.remove()
    model.load_state_dict(stopper.best_state)
    history.best_epoch = stopper.best_epoch
    history.best_validation_auc = history.validation_auc[stopper.best_epoch]
    model.eval()
    return model, history
