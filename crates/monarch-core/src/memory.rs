//! Host buffers whose size comes from a problem's shape: allocated as an error, not an abort.

use std::collections::TryReserveError;

/// `len` default values (zeros for the numeric types), or an error where the allocator cannot
/// provide them (`vec!` would abort the process). The allocation is probed first and then made
/// by `vec!`, which for the primitive numbers (f32) takes zeroed pages from the allocator
/// untouched: a reserved `Vec` filled with zeros writes every page (about 1 s a GiB on the
/// development box).
pub fn try_zeros<T: Clone + Default>(len: usize) -> Result<Vec<T>, TryReserveError> {
    Vec::<T>::new().try_reserve_exact(len)?;
    Ok(vec![T::default(); len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_or_an_error() {
        assert_eq!(try_zeros::<f32>(3).unwrap(), [0.0; 3]);
        assert!(try_zeros::<f32>(0).unwrap().is_empty());
        assert!(try_zeros::<f32>(usize::MAX / 8).is_err());
        assert!(try_zeros::<u64>(usize::MAX).is_err());
    }
}
