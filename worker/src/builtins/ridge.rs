//! Ridge regression with intercept (closed form, as sklearn's `Ridge`) and its R² score.
//! The reductions (and, off the CPU, the predictions) run as candle tensor ops on a given
//! device, a GPU's included, in f64; the small `k×k` solve on the CPU. On a GPU the sums are
//! taken in another order, so results may differ from the CPU's in the last digits: within a
//! relative 1e-9 for well-conditioned data ([`GPU_TOLERANCE`]).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// How far (relative) a GPU's fit and score may be from the CPU's on well-conditioned data.
pub const GPU_TOLERANCE: f64 = 1e-9;

/// A fitted linear model, stored as the `model.json` artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub alpha: f64,
    pub weights: Vec<f64>,
    pub intercept: f64,
    pub features: usize,
}

impl Model {
    /// The prediction for the features `x` (extra values are ignored, missing ones count 0).
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.intercept + self.weights.iter().zip(x).map(|(w, x)| w * x).sum::<f64>()
    }
}

/// Fits ridge regression with intercept on rows `x1..xk, y`.
///
/// As sklearn's `Ridge(alpha, fit_intercept=True)`: X and y are centred by their means,
/// `w = (XcᵀXc + αI)⁻¹ Xcᵀyc` and `intercept = ȳ − x̄·w`. The means, `XcᵀXc` and `Xcᵀyc`
/// are computed in f64 tensors on `device`; the `k×k` solve is Gaussian elimination with
/// partial pivoting on the CPU.
pub fn fit_ridge(rows: &[Vec<f64>], alpha: f64, device: &Device) -> Result<Model, String> {
    if !alpha.is_finite() || alpha < 0.0 {
        return Err(format!("alpha must be a finite number >= 0, got {alpha}"));
    }
    let first = rows.first().ok_or("the training set has no rows")?;
    let width = first.len();
    if width < 2 {
        return Err(format!(
            "rows need at least one feature column and a target column, got {width} column(s)"
        ));
    }
    if let Some(i) = rows.iter().position(|r| r.len() != width) {
        return Err(format!(
            "row {} has {} columns, but row 1 has {width}",
            i + 1,
            rows[i].len()
        ));
    }
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let data = Tensor::from_vec(flat, (rows.len(), width), device)
        .map_err(|e| format!("tensor computation failed: {e}"))?;
    fit_tensor(&data, alpha)
}

/// Fits ridge regression on `data`, an `n × (k+1)` tensor of rows `x1..xk, y` (f64 or f32,
/// on any device); the reductions are taken in f64.
pub fn fit_tensor(data: &Tensor, alpha: f64) -> Result<Model, String> {
    let (_, width) = data
        .dims2()
        .map_err(|e| format!("the data is not a matrix: {e}"))?;
    if width < 2 {
        return Err(format!(
            "rows need at least one feature column and a target column, got {width} column(s)"
        ));
    }
    let k = width - 1;
    let (means, xtx, xty) =
        reductions(data, k).map_err(|e| format!("tensor computation failed: {e}"))?;
    let mut a = xtx;
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += alpha;
    }
    let weights = solve(a, xty)?;
    let intercept = means[k]
        - means[..k]
            .iter()
            .zip(&weights)
            .map(|(m, w)| m * w)
            .sum::<f64>();
    Ok(Model {
        alpha,
        weights,
        intercept,
        features: k,
    })
}

/// Column means of the data, `XcᵀXc` and `Xcᵀyc` (as a vector), computed on its device.
#[allow(clippy::type_complexity)]
fn reductions(data: &Tensor, k: usize) -> candle_core::Result<(Vec<f64>, Vec<Vec<f64>>, Vec<f64>)> {
    let data = data.to_dtype(DType::F64)?;
    let means = data.mean_keepdim(0)?;
    let centred = data.broadcast_sub(&means)?;
    let xc = centred.narrow(1, 0, k)?.contiguous()?;
    let yc = centred.narrow(1, k, 1)?.contiguous()?;
    let xt = xc.t()?;
    let xtx = xt.matmul(&xc)?.to_vec2::<f64>()?;
    let xty = xt.matmul(&yc)?.flatten_all()?.to_vec1::<f64>()?;
    let means = means.flatten_all()?.to_vec1::<f64>()?;
    Ok((means, xtx, xty))
}

/// Solves `a·x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>, String> {
    let k = b.len();
    let scale = a.iter().flatten().fold(0.0_f64, |m, x| m.max(x.abs()));
    let singular = || {
        "the system is singular (a feature is constant or features are collinear); \
         use alpha > 0"
            .to_string()
    };
    if scale == 0.0 || !scale.is_finite() {
        return Err(singular());
    }
    let tol = scale * 1e-12;
    for col in 0..k {
        let pivot = (col..k)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() <= tol {
            return Err(singular());
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        let (b_upper, b_lower) = b.split_at_mut(col + 1);
        for (row, b_row) in lower.iter_mut().zip(b_lower) {
            let f = row[col] / pivot_row[col];
            if f != 0.0 {
                for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * p;
                }
                *b_row -= f * b_upper[col];
            }
        }
    }
    let mut x = vec![0.0; k];
    for r in (0..k).rev() {
        let s: f64 = (r + 1..k).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Ok(x)
}

/// R² = 1 − SS_res/SS_tot of `model` on rows `x1..xk, y` (rows of another width are
/// ignored). With a constant target, a perfect fit scores 1 and any other 0, as sklearn;
/// no rows give NaN.
pub fn r2(model: &Model, rows: &[Vec<f64>]) -> f64 {
    let k = model.features;
    let ys = || rows.iter().filter(|r| r.len() == k + 1).map(|r| r[k]);
    let count = ys().count();
    if count == 0 {
        return f64::NAN;
    }
    let mean = ys().sum::<f64>() / count as f64;
    let ss_tot: f64 = ys().map(|y| (y - mean).powi(2)).sum();
    let ss_res: f64 = rows
        .iter()
        .filter(|r| r.len() == k + 1)
        .map(|r| (r[k] - model.predict(&r[..k])).powi(2))
        .sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}

/// R² of `model` on rows `x1..xk, y`, as [`r2`]; off the CPU, the predictions and sums are
/// tensor ops on `device` (f64).
pub fn r2_on(model: &Model, rows: &[Vec<f64>], device: &Device) -> Result<f64, String> {
    if device.is_cpu() {
        return Ok(r2(model, rows));
    }
    r2_tensor(model, rows, device)
}

/// R² as tensor ops on `device`.
pub fn r2_tensor(model: &Model, rows: &[Vec<f64>], device: &Device) -> Result<f64, String> {
    let k = model.features;
    let flat: Vec<f64> = rows
        .iter()
        .filter(|r| r.len() == k + 1)
        .flatten()
        .copied()
        .collect();
    let n = flat.len() / (k + 1);
    if n == 0 {
        return Ok(f64::NAN);
    }
    let sums = || -> candle_core::Result<(f64, f64)> {
        let data = Tensor::from_vec(flat, (n, k + 1), device)?;
        let x = data.narrow(1, 0, k)?.contiguous()?;
        let y = data.narrow(1, k, 1)?.contiguous()?;
        let w = Tensor::from_vec(model.weights.clone(), (k, 1), device)?;
        let predicted = x.matmul(&w)?.affine(1.0, model.intercept)?;
        let ss_res = (&y - &predicted)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        let mean = y.mean_all()?;
        let ss_tot = y
            .broadcast_sub(&mean)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
        Ok((ss_res, ss_tot))
    };
    let (ss_res, ss_tot) = sums().map_err(|e| format!("tensor computation failed: {e}"))?;
    if ss_tot == 0.0 {
        return Ok(if ss_res == 0.0 { 1.0 } else { 0.0 });
    }
    Ok(1.0 - ss_res / ss_tot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins::generate_points;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn recovers_a_noiseless_line() {
        let rows: Vec<Vec<f64>> = (0..50)
            .map(|i| {
                let x = i as f64 * 0.37 - 4.0;
                vec![x, 3.0 * x + 2.0]
            })
            .collect();
        let m = fit_ridge(&rows, 0.0, &Device::Cpu).unwrap();
        assert_eq!(m.features, 1);
        assert!((m.weights[0] - 3.0).abs() < 1e-9, "{m:?}");
        assert!((m.intercept - 2.0).abs() < 1e-9, "{m:?}");
        assert!((r2(&m, &rows) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn one_feature_matches_the_scalar_closed_form() {
        let rows = generate_points(5, 200, 1);
        for alpha in [0.0, 0.5, 10.0, 1000.0] {
            let n = rows.len() as f64;
            let mx = rows.iter().map(|r| r[0]).sum::<f64>() / n;
            let my = rows.iter().map(|r| r[1]).sum::<f64>() / n;
            let sxx: f64 = rows.iter().map(|r| (r[0] - mx) * (r[0] - mx)).sum();
            let sxy: f64 = rows.iter().map(|r| (r[0] - mx) * (r[1] - my)).sum();
            let w = sxy / (sxx + alpha);
            let b = my - mx * w;
            let m = fit_ridge(&rows, alpha, &Device::Cpu).unwrap();
            assert!(close(m.weights[0], w, 1e-9), "alpha {alpha}: {m:?} vs {w}");
            assert!(close(m.intercept, b, 1e-9), "alpha {alpha}: {m:?} vs {b}");
            assert_eq!(m.alpha, alpha);
        }
    }

    #[test]
    fn recovers_three_noiseless_coefficients() {
        let coef = [1.5, -2.0, 0.25];
        let rows: Vec<Vec<f64>> = generate_points(11, 60, 3)
            .into_iter()
            .map(|mut r| {
                r[3] = 4.0 + coef.iter().zip(&r[..3]).map(|(c, x)| c * x).sum::<f64>();
                r
            })
            .collect();
        let m = fit_ridge(&rows, 0.0, &Device::Cpu).unwrap();
        for (w, c) in m.weights.iter().zip(coef) {
            assert!((w - c).abs() < 1e-9, "{m:?}");
        }
        assert!((m.intercept - 4.0).abs() < 1e-9, "{m:?}");
        assert!((r2(&m, &rows) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn r2_of_noisy_data_is_below_one_and_constant_targets_are_handled() {
        let rows = generate_points(2, 300, 2);
        let m = fit_ridge(&rows, 1.0, &Device::Cpu).unwrap();
        let s = r2(&m, &rows);
        assert!(s < 1.0 && s > 0.0, "{s}");
        let flat = Model {
            alpha: 0.0,
            weights: vec![0.0],
            intercept: 5.0,
            features: 1,
        };
        assert_eq!(r2(&flat, &[vec![1.0, 5.0], vec![2.0, 5.0]]), 1.0);
        assert_eq!(r2(&flat, &[vec![1.0, 6.0], vec![2.0, 6.0]]), 0.0);
        assert!(r2(&flat, &[]).is_nan());
    }

    #[test]
    fn bad_training_data_is_an_error_not_a_panic() {
        let d = &Device::Cpu;
        assert!(fit_ridge(&[], 1.0, d).unwrap_err().contains("no rows"));
        assert!(fit_ridge(&[vec![1.0]], 1.0, d).is_err());
        assert!(fit_ridge(&[vec![1.0, 2.0], vec![1.0]], 1.0, d)
            .unwrap_err()
            .contains("row 2"));
        assert!(fit_ridge(&[vec![1.0, 2.0]], -1.0, d).is_err());
        let constant = vec![vec![1.0, 2.0], vec![1.0, 3.0]];
        assert!(fit_ridge(&constant, 0.0, d)
            .unwrap_err()
            .contains("singular"));
        let collinear: Vec<Vec<f64>> = (0..10)
            .map(|i| vec![i as f64, 2.0 * i as f64, i as f64 + 1.0])
            .collect();
        assert!(fit_ridge(&collinear, 0.0, d)
            .unwrap_err()
            .contains("singular"));
        // Ridge regularisation makes them solvable.
        assert!(fit_ridge(&constant, 1.0, d).is_ok());
        assert!(fit_ridge(&collinear, 1.0, d).is_ok());
    }
}
