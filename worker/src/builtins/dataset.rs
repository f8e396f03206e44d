//! Synthetic linear-regression data, its seeded train/test split and its CSV form.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;

/// Seeded points of `y = a·x + b + noise`, each row `x1..xk, y` (`k = features`).
///
/// With `ChaCha8Rng::seed_from_u64(seed)`, draws (uniform in `[-10, 10)`) the `k`
/// coefficients `a`, then `b`, then for each point its `k` features and then its noise.
pub fn generate_points(seed: u64, n: usize, features: usize) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a: Vec<f64> = (0..features)
        .map(|_| rng.random_range(-10.0..10.0))
        .collect();
    let b: f64 = rng.random_range(-10.0..10.0);
    (0..n)
        .map(|_| {
            let mut row = Vec::with_capacity(features + 1);
            let mut y = b;
            for coef in &a {
                let x: f64 = rng.random_range(-10.0..10.0);
                y += coef * x;
                row.push(x);
            }
            let noise: f64 = rng.random_range(-10.0..10.0);
            row.push(y + noise);
            row
        })
        .collect()
}

/// The number of test rows of `n` for `test_fraction`: `ceil(n * test_fraction)`, clamped
/// to `[0, n]` (a NaN fraction gives 0).
pub fn test_count(n: usize, test_fraction: f64) -> usize {
    let t = (n as f64 * test_fraction).ceil();
    if t.is_nan() || t <= 0.0 {
        0
    } else if t >= n as f64 {
        n
    } else {
        t as usize
    }
}

/// Splits rows into `(train, test)` with a seeded permutation.
///
/// The row indices are shuffled by Fisher–Yates driven by `ChaCha8Rng::seed_from_u64(seed)`
/// (for `i` from `n-1` down to 1, swap `i` with `j` drawn uniformly from `0..=i` as a `u64`);
/// the test rows are the first [`test_count`] of the permutation, the train rows the rest,
/// both in permutation order.
pub fn split_rows(
    rows: &[Vec<f64>],
    test_fraction: f64,
    seed: u64,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i as u64) as usize;
        order.swap(i, j);
    }
    let n_test = test_count(rows.len(), test_fraction);
    let pick = |idx: &[usize]| idx.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
    (pick(&order[n_test..]), pick(&order[..n_test]))
}

/// Rows as CSV: no header, one line per row, numbers in Rust's round-tripping `{}` form.
pub fn to_csv(rows: &[Vec<f64>]) -> String {
    let mut out = String::with_capacity(rows.len() * rows.first().map_or(0, |r| r.len() * 20));
    for row in rows {
        for (i, x) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Writing into a String cannot fail.
            let _ = write!(out, "{x}");
        }
        out.push('\n');
    }
    out
}

/// Parses header-less numeric CSV; blank lines are skipped and every row must have the
/// same number of finite numbers.
pub fn parse_csv(text: &str) -> Result<Vec<Vec<f64>>, String> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row = line
            .split(',')
            .enumerate()
            .map(|(c, field)| {
                let field = field.trim();
                match field.parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(x),
                    _ => Err(format!(
                        "line {}, column {}: `{field}` is not a finite number",
                        i + 1,
                        c + 1
                    )),
                }
            })
            .collect::<Result<Vec<f64>, String>>()?;
        if let Some(first) = rows.first() {
            if first.len() != row.len() {
                return Err(format!(
                    "line {} has {} columns, but earlier lines have {}",
                    i + 1,
                    row.len(),
                    first.len()
                ));
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_per_seed() {
        let a = generate_points(7, 50, 2);
        assert_eq!(a, generate_points(7, 50, 2));
        assert_ne!(a, generate_points(8, 50, 2));
        assert_eq!(a.len(), 50);
        assert!(a.iter().all(|r| r.len() == 3));
        assert!(a
            .iter()
            .all(|r| r[..2].iter().all(|x| (-10.0..10.0).contains(x))));
    }

    #[test]
    fn split_is_75_25_and_a_partition() {
        let rows = generate_points(1, 100, 1);
        let (train, test) = split_rows(&rows, 0.25, 23);
        assert_eq!((train.len(), test.len()), (75, 25));
        let mut all: Vec<Vec<f64>> = train.iter().chain(&test).cloned().collect();
        let mut orig = rows.clone();
        let key = |r: &Vec<f64>| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        all.sort_by_key(key);
        orig.sort_by_key(key);
        assert_eq!(all, orig);
        assert_eq!((train, test), split_rows(&rows, 0.25, 23));
        assert_ne!(split_rows(&rows, 0.25, 23).1, split_rows(&rows, 0.25, 24).1);
    }

    #[test]
    fn test_count_rounds_up_and_clamps() {
        assert_eq!(test_count(100, 0.25), 25);
        assert_eq!(test_count(10, 0.01), 1);
        assert_eq!(test_count(10, 0.0), 0);
        assert_eq!(test_count(10, 1.0), 10);
        assert_eq!(test_count(10, 2.0), 10);
        assert_eq!(test_count(10, f64::NAN), 0);
        assert_eq!(test_count(0, 0.5), 0);
    }

    #[test]
    fn csv_round_trips_exactly() {
        let rows = generate_points(3, 20, 3);
        assert_eq!(parse_csv(&to_csv(&rows)).unwrap(), rows);
        assert_eq!(parse_csv("").unwrap(), Vec::<Vec<f64>>::new());
        assert!(parse_csv("1,2\n3\n").unwrap_err().contains("line 2"));
        assert!(parse_csv("1,x\n").unwrap_err().contains("`x`"));
        assert!(parse_csv("1,NaN\n").is_err());
    }
}
