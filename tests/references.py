"""Reference implementations the tests and benchmarks check the pipeline's fast forms against: written
the way the authors' code computes them, slow on purpose, never used by the pipeline."""
import torch

from pipeline_src.methods.vpn import condition, sample_noise


def optimal_q_quadratic_reference(x: torch.Tensor) -> torch.Tensor:
    """Optimal Q the authors' way: 2X plus B-1 shifted copies of the batch, summed (memory and time ~ B^2)."""
    batch = x.shape[0]
    if batch == 1:
        return x.clone()
    copies = torch.cat([torch.roll(x, shifts=k, dims=0) for k in range(1, batch)], dim=0)
    return (2 * x + copies.view(batch - 1, *x.shape).sum(dim=0)) / (batch + 1)


def class_enumeration_loop(method, x: torch.Tensor, batch_size: int, z: torch.Tensor | None = None) -> torch.Tensor:
    """VPN class enumeration as the authors' Python loop: C passes of g and f per batch."""
    preds = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        scores = xb.new_empty(len(xb), method.num_classes)
        for k in range(method.num_classes):
            candidates = torch.full((len(xb),), k, device=xb.device)
            sigma = method.generator(condition(xb, candidates, method.num_classes, method.c))
            eps = sample_noise(sigma)[0] if z is None else sigma * z[k, i:i + batch_size].to(sigma.device)
            scores[:, k] = method.model(xb + eps).softmax(-1)[:, k]
        preds.append(scores.argmax(1))
    return torch.cat(preds)
