"""Train a 2D image classifier (seed 002): augmentation, weight decay, class weighting, early
stopping on validation AUC. The network comes from `cadx.models.backbones`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cadx.config import ImageTrainConfig
from cadx.errors import SplitError
from cadx.train.augment import augment_batch, image_augmentation
from cadx.train.fit import EarlyStopping, epoch_progress


@dataclass
class ImageTrainingHistory:
    """Per-epoch training loss and validation AUC; the epoch whose model was kept."""

    train_loss: list[float] = field(default_factory=list)
    validation_auc: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_validation_auc: float = 0.0
    stopped_early: bool = False


def _check_both_classes(labels: np.ndarray, name: str) -> None:
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise SplitError(f"{name} images are all of one class ({len(labels)} images); "
                         "need benign and malignant")


@torch.inference_mode()
def predict_image_probabilities(model: torch.nn.Module, images: np.ndarray,
                                batch_size: int = 32) -> np.ndarray:
    """Malignancy probability of each (C, H, W) image, batched, model in eval mode."""
    was_training = model.training
    model.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    logits = [model(tensor[i:i + batch_size]).reshape(-1)
              for i in range(0, len(tensor), batch_size)]
    model.train(was_training)
    return torch.sigmoid(torch.cat(logits)).numpy().astype(np.float64) if logits else np.zeros(0)


def fit_image_model(model: torch.nn.Module, train_images: np.ndarray, train_labels: np.ndarray,
                    validation_images: np.ndarray, validation_labels: np.ndarray,
                    config: ImageTrainConfig, *, progress: bool = True,
                    ) -> tuple[torch.nn.Module, ImageTrainingHistory]:
    """Train `model` (one logit per image) and return it at its best validation AUC."""
    train_labels = np.asarray(train_labels).astype(np.float32)
    validation_labels = np.asarray(validation_labels).astype(int)
    _check_both_classes(train_labels, "training")
    _check_both_classes(validation_labels, "validation")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pipeline = image_augmentation(train_images.shape[-1], config.seed)
    n_pos = float(train_labels.sum())
    # Class weighting: positives weighted by n_negative / n_positive.
    pos_weight = torch.tensor((len(train_labels) - n_pos) / n_pos)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    x_train = torch.from_numpy(np.ascontiguousarray(train_images, dtype=np.float32))
    y_train = torch.from_numpy(train_labels)
    history = ImageTrainingHistory()
    stopper = EarlyStopping(config.early_stop_patience, mode="max")
    with epoch_progress(progress) as bar:
        task = bar.add_task("epochs", total=config.max_epochs, status="")
        for epoch in range(config.max_epochs):
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                index = order[start:start + config.batch_size]
                if len(index) < 2:  # BatchNorm cannot train on a single image
                    continue
                batch = x_train[index]
                if config.augment:
                    batch = augment_batch(batch, pipeline)
                optimiser.zero_grad(set_to_none=True)
                logits = model(batch).reshape(-1)
                loss = F.binary_cross_entropy_with_logits(logits, y_train[index],
                                                          pos_weight=pos_weight)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(index)
            scores = predict_image_probabilities(model, validation_images)
            auc = float(roc_auc_score(validation_labels, scores))
            history.train_loss.append(total / len(x_train))
            history.validation_auc.append(auc)
            stop = stopper.update(auc, epoch, model)
            bar.update(task, advance=1, status=f"loss {history.train_loss[-1]:.3f} "
                                               f"val AUC {auc:.3f}")
            if stop:
                history.stopped_early = True
                break
    model.load_state_dict(stopper.best_state)
    history.best_epoch = stopper.best_epoch
    history.best_validation_auc = history.validation_auc[stopper.best_epoch]
    model.eval()
    return model, history
