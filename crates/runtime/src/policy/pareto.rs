//! The quality/latency Pareto front: a point is worth choosing only if no other point is at
//! least as good and at least as fast, and strictly better in one of the two.

/// Indices of the points on the front of `(latency, quality)` pairs, cheapest first.
/// Non-finite entries are never on the front; of exact duplicates only the first is kept.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let finite = |&(latency, quality): &(f64, f64)| latency.is_finite() && quality.is_finite();
    let mut order: Vec<usize> = (0..points.len()).filter(|&i| finite(&points[i])).collect();
    // By latency, then best quality first, so a sweep keeps each new best quality.
    order.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
            .then(a.cmp(&b))
    });
    let mut front = Vec::new();
    let mut best_quality = f64::NEG_INFINITY;
    for i in order {
        if points[i].1 > best_quality {
            best_quality = points[i].1;
            front.push(i);
        }
    }
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_undominated_points_cheapest_first() {
        let points = [
            (100.0, 0.60), // 0: front (best)
            (10.0, 0.30),  // 1: front (cheapest)
            (50.0, 0.40),  // 2: dominated by 3
            (40.0, 0.45),  // 3: front
            (120.0, 0.60), // 4: slower, no better than 0
            (40.0, 0.45),  // 5: duplicate of 3
            (f64::NAN, 0.9),
        ];
        assert_eq!(pareto_front(&points), vec![1, 3, 0]);
        assert!(pareto_front(&[]).is_empty());
    }
}
