"""Fitting a twin to measured data: minibatch Adam, cosine learning-rate decay, early stopping.

Works for any twin whose trainable quantities are its ``parameters()``: the weights of a neural twin, the
physical constants of a physics twin, both for a hybrid one. The training loss is the mean squared error
with each output standardised by its spread in the training data, so every output counts equally
whatever its units; model selection and the report use the NMSE (``nmse``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from twins.data import TwinData
from twins.neural import robust_std

logger = logging.getLogger(__name__)

_EVAL_BATCH = 8192


def nmse(pred: Tensor, y: Tensor) -> float:
    """Normalised mean squared error mean((pred - y)^2) / var(y), over all elements.

    0 is perfect; 1 is no better than predicting the mean of y. Shapes of pred and y must agree.
    """
    if pred.shape != y.shape:
        raise ValueError(f"pred and y shapes differ: {list(pred.shape)} vs {list(y.shape)}")
    return float(torch.mean((pred - y) ** 2) / torch.var(y, unbiased=False))


@dataclass
class FitReport:
    """Result of ``fit_twin``; the model holds the weights of ``best_epoch``.

    Attributes:
        train_nmse: NMSE on the training set with the best weights.
        val_nmse: NMSE on the validation set with the best weights (the held-out error to report).
        epochs_run: epochs completed (fewer than asked when stopped early).
        best_epoch: epoch (1-based) with the lowest validation NMSE.
        seconds: wall-clock time of the fit.
    """

    train_nmse: float
    val_nmse: float
    epochs_run: int
    best_epoch: int
    seconds: float


def _evaluated(model: nn.Module, train: TwinData, val: TwinData) -> FitReport:
    """The report of a model that is not trained: its NMSE on both sets, as it is."""
    start = time.perf_counter()
    model.eval()
    dtype = next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)
    errors = []
    with torch.no_grad():
        for data in (train, val):
            x, theta, y = _tensors(data, dtype)
            errors.append(nmse(_predict(model, x, theta), y))
    return FitReport(errors[0], errors[1], epochs_run=0, best_epoch=0, seconds=time.perf_counter() - start)


def _tensors(data: TwinData, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.as_tensor(getattr(data, name)).to(dtype) for name in ("x", "theta", "y"))  # type: ignore[return-value]


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, theta: Tensor) -> Tensor:
    """Model outputs for a whole data set, in chunks."""
    return torch.cat([model(x[i : i + _EVAL_BATCH], theta[i : i + _EVAL_BATCH]) for i in range(0, len(x), _EVAL_BATCH)])


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily use ``threads`` torch CPU threads (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_fits(model: nn.Module, data: TwinData, name: str) -> None:
    widths = (data.n_inputs, data.n_params, data.n_outputs)
    expected = (model.n_inputs, model.n_params, model.n_outputs)
    if widths != expected:
        raise ValueError(f"{name} data has (n_inputs, n_params, n_outputs) = {widths}, the twin expects {expected}")
    if len(data) < 2 or not float(data.y.var()) > 0:
        raise ValueError(f"{name} data needs at least 2 samples with outputs that vary (var(y) > 0)")


def fit_twin(
    model: nn.Module,
    train: TwinData,
    val: TwinData,
    *,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    patience: int | None = 20,
    normalise: bool = True,
    threads: int | None = 1,
    progress: Callable[[int, float, float], None] | None = None,
) -> FitReport:
    """Fit ``model`` to ``train``, stopping early on ``val``; the model ends with its best weights, in eval mode.

    Args:
        model: a twin (see ``twins``); its ``parameters()`` that require grad are fitted.
        train: training samples.
        val: validation samples (held out), used for early stopping and the reported error.
        epochs: maximum number of passes over ``train``.
        lr: initial Adam learning rate; decays to lr/100 along a cosine over ``epochs``.
        batch_size: samples per Adam step.
        weight_decay: Adam L2 penalty (0 for physics twins: their parameters are physical constants).
        seed: seeds the shuffling and any randomness in the model's forward; same seed, same result.
            The caller's global torch random state is left as it was.
        patience: stop after this many epochs without a new best validation NMSE; None never stops early.
        normalise: first set the model's input/output standardisation from ``train`` if it has
            ``set_input_normalisation`` / ``set_output_normalisation`` (e.g. ``NeuralTwin``). Pass False when
            fine-tuning an already fitted twin, whose weights assume its existing standardisation.
        threads: torch CPU threads during the fit (the process-wide setting is restored afterwards);
            None keeps the current setting. One thread is the fastest for twin-sized networks and, unlike
            torch's multi-threaded kernels, does not slow down many-fold when other processes share the cores.
        progress: called after each epoch as progress(epoch, train_nmse, val_nmse), epoch 1-based;
            train_nmse is averaged over the epoch's steps.
    Returns:
        A ``FitReport``; for a model with no trainable parameters, its errors as it is (0 epochs run).
    Raises:
        ValueError: data widths do not fit the model, or bad arguments.
        FloatingPointError: the loss was not finite from the first epoch on (try a lower ``lr``).
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    _check_fits(model, train, "training")
    _check_fits(model, val, "validation")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:  # a fixed model (a nominal physics twin): nothing to fit, its errors are still reported
        return _evaluated(model, train, val)
    dtype = trainable[0].dtype

    start = time.perf_counter()
    x, theta, y = _tensors(train, dtype)
    x_val, theta_val, y_val = _tensors(val, dtype)
    if normalise and hasattr(model, "set_input_normalisation"):
        model.set_input_normalisation(x, theta)
    if normalise and hasattr(model, "set_output_normalisation"):
        model.set_output_normalisation(y)
    scale = robust_std(y)  # per-output spread: the loss is MSE in units of it
    var_y = float(torch.var(y, unbiased=False))

    optimiser = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs, eta_min=lr / 100)
    n = len(x)
    best_val, best_epoch, best_state = math.inf, 0, None
    epoch = 0
    logger.info(
        "fitting %s twin (%d trainable values) on %d samples, validating on %d",
        getattr(model, "kind", type(model).__name__), sum(p.numel() for p in trainable), n, len(x_val),
    )
    with _torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shuffle = torch.Generator().manual_seed(seed)
        for epoch in range(1, epochs + 1):
            model.train()
            squared_error = 0.0
            for index in torch.randperm(n, generator=shuffle).split(batch_size):
                error = model(x[index], theta[index]) - y[index]
                loss = torch.mean((error / scale) ** 2)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                squared_error += float(torch.sum(error.detach() ** 2))
            schedule.step()
            train_nmse = squared_error / (y.numel() * var_y)

            model.eval()
            val_nmse = nmse(_predict(model, x_val, theta_val), y_val)
            if progress is not None:
                progress(epoch, train_nmse, val_nmse)
            logger.debug("epoch %d: train NMSE %.4g, val NMSE %.4g", epoch, train_nmse, val_nmse)
            if not math.isfinite(train_nmse):
                logger.warning("twin fit stopped at epoch %d: the loss is not finite (learning rate too high?)", epoch)
                break
            if val_nmse < best_val:
                best_val, best_epoch = val_nmse, epoch
                best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
            elif patience is not None and epoch - best_epoch >= patience:
                logger.info("early stop at epoch %d: no improvement since epoch %d", epoch, best_epoch)
                break

    if best_state is None:
        raise FloatingPointError(f"twin fit diverged from the first epoch (lr={lr}); try a lower learning rate")
    model.load_state_dict(best_state)
    model.eval()
    report = FitReport(
        train_nmse=nmse(_predict(model, x, theta), y),
        val_nmse=best_val,
        epochs_run=epoch,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - start,
    )
    logger.info(
        "twin fit: val NMSE %.4g (epoch %d of %d run), train NMSE %.4g, %.1f s",
        report.val_nmse, report.best_epoch, report.epochs_run, report.train_nmse, report.seconds,
    )
    return report
