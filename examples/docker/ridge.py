"""Ridge regression in a container, with baton's process contract.

Reads a JSON object on stdin: {"train": ROWS, "test": ROWS, "alpha": A}, where ROWS are
lists of numbers x1..xk, y. Fits ridge regression on the training rows (centred normal
equations solved by Gaussian elimination with partial pivoting, as baton's built-in
`train_ridge` does) and prints, as its last stdout line, {"alpha": A, "r2": R2} with the R²
of the model on the test rows (as the built-in `evaluate`). Python's standard library only.
"""

import json
import sys


def fit(rows, alpha):
    k = len(rows[0]) - 1
    n = len(rows)
    means = [sum(r[j] for r in rows) / n for j in range(k + 1)]
    xc = [[r[j] - means[j] for j in range(k)] for r in rows]
    yc = [r[k] - means[k] for r in rows]
    a = [[sum(x[i] * x[j] for x in xc) for j in range(k)] for i in range(k)]
    b = [sum(x[i] * y for x, y in zip(xc, yc)) for i in range(k)]
    for i in range(k):
        a[i][i] += alpha
    weights = solve(a, b)
    intercept = means[k] - sum(m * w for m, w in zip(means[:k], weights))
    return weights, intercept


def solve(a, b):
    k = len(b)
    for col in range(k):
        pivot = max(range(col, k), key=lambda i: abs(a[i][col]))
        if a[pivot][col] == 0.0:
            raise ValueError("the system is singular; use alpha > 0")
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        for row in range(col + 1, k):
            f = a[row][col] / a[col][col]
            if f != 0.0:
                for c in range(col, k):
                    a[row][c] -= f * a[col][c]
                b[row] -= f * b[col]
    x = [0.0] * k
    for r in reversed(range(k)):
        s = sum(a[r][c] * x[c] for c in range(r + 1, k))
        x[r] = (b[r] - s) / a[r][r]
    return x


def r2(weights, intercept, rows):
    k = len(weights)
    ys = [r[k] for r in rows]
    mean = sum(ys) / len(ys)
    ss_tot = sum((y - mean) ** 2 for y in ys)
    ss_res = sum(
        (r[k] - (intercept + sum(w * x for w, x in zip(weights, r[:k])))) ** 2 for r in rows
    )
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def main():
    inputs = json.loads(sys.stdin.readline())
    train, test, alpha = inputs["train"], inputs["test"], float(inputs["alpha"])
    print(f"fitting ridge alpha={alpha} on {len(train)} rows", file=sys.stderr)
    weights, intercept = fit(train, alpha)
    print(json.dumps({"weights": weights, "intercept": intercept}))
    print(json.dumps({"alpha": alpha, "r2": r2(weights, intercept, test)}))


if __name__ == "__main__":
    main()
