"""A synthetic reference with the shapes drift meets in practice, and the four shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd

SHARES = np.array([0.35, 0.25, 0.20, 0.12, 0.08])
SHIFTS = {"mean": "x2", "category": "plan", "unseen": "region", "missing": "income"}


def make_frame(rng: np.random.Generator, n: int, shift: str | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({
        "x0": rng.normal(size=n),
        "x1": rng.normal(10, 3, size=n),
        "x2": rng.normal(size=n),
        "visits": rng.poisson(3, size=n).astype(float),  # discrete: ties across bin edges
        "income": rng.lognormal(10, 1, size=n),  # skewed, with missing values
    })
    frame.loc[rng.random(n) < 0.05, "income"] = np.nan
    shares = SHARES.copy()
    if shift == "category":  # "b" gains five points, taken evenly (in proportion) from the rest
        rest = [0, 2, 3, 4]
        shares[1] += 0.05
        shares[rest] *= (1 - shares[1]) / shares[rest].sum()
    frame["plan"] = rng.choice(list("abcde"), n, p=shares)
    frame["region"] = rng.choice(["north", "south", "west"], n, p=[0.5, 0.3, 0.2])
    if shift == "mean":
        frame["x2"] += 0.25
    if shift == "unseen":
        frame.loc[rng.random(n) < 0.02, "region"] = "atlantis"
    if shift == "missing":
        frame.loc[rng.random(n) < 0.10, "income"] = np.nan
    return frame
