"""Generates the bundled demo dataset (src/mlharbor/demo/churn.csv), deterministically.

A synthetic telecom churn table with numeric and categorical features whose churn probability
follows a known logistic rule plus noise, so a model has something real to learn.
Run: python scripts/make_demo_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make(n: int = 5000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.55, 0.25, 0.20])
    internet = rng.choice(["dsl", "fiber", "none"], n, p=[0.35, 0.45, 0.20])
    payment = rng.choice(
        ["card", "bank-transfer", "electronic-check", "mailed-check"], n, p=[0.3, 0.25, 0.3, 0.15]
    )
    tenure = np.clip(rng.gamma(2.0, 14.0, n), 1, 72).round().astype(int)
    base = np.where(internet == "fiber", 80.0, np.where(internet == "dsl", 55.0, 25.0))
    monthly = np.round(base + rng.normal(0, 12, n), 2).clip(15, 130)
    total = np.round(monthly * tenure * rng.uniform(0.9, 1.05, n), 2)
    support_calls = rng.poisson(1.2 + (internet == "fiber") * 0.8, n)
    senior = rng.binomial(1, 0.16, n)
    logit = (
        -1.2
        + 1.4 * (contract == "month-to-month")
        - 1.1 * (contract == "two-year")
        + 0.6 * (internet == "fiber")
        + 0.5 * (payment == "electronic-check")
        - 0.045 * tenure
        + 0.012 * (monthly - 60)
        + 0.35 * support_calls
        + 0.3 * senior
    )
    churn = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_calls": support_calls,
            "senior": senior,
            "contract": contract,
            "internet": internet,
            "payment_method": payment,
            "churn": churn,
        }
    )
    # A few missing values, as real exports have.
    missing = rng.random(n) < 0.01
    frame.loc[missing, "total_charges"] = np.nan
    return frame


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "src" / "mlharbor" / "demo" / "churn.csv"
    make().to_csv(out, index=False)
    print(f"wrote {out}")
