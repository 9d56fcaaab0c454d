//! Integration test: `probe()`/`describe()` list devices or report why CUDA is unavailable, without panicking.

use backend_cuda::{describe, probe, CudaError};

#[test]
fn probe_lists_devices_or_reports_unavailable() {
    match probe() {
        Ok(devices) => {
            assert!(!devices.is_empty(), "Ok(..) must carry at least one device");
            for d in &devices {
                println!("{d:?}");
                println!("{d}");
                assert!(!d.name.is_empty());
                assert!(d.compute_capability.0 >= 1);
                assert!(d.total_memory_bytes > 0);
            }
            for (i, d) in devices.iter().enumerate() {
                assert_eq!(d.ordinal, i);
            }
        }
        Err(e @ CudaError::Unavailable { .. }) => println!("skipped: {e}"),
        Err(e) => panic!("CUDA present but probing failed: {e}"),
    }
}

#[test]
fn describe_agrees_with_probe() {
    match (probe(), describe()) {
        (Ok(devices), Ok(line)) => {
            println!("{line}");
            assert!(line.starts_with(&devices[0].name));
            assert!(!line.contains('\n'));
        }
        (Err(a), Err(b)) => {
            println!("skipped: {b}");
            assert_eq!(a.to_string(), b.to_string());
        }
        (a, b) => panic!("probe and describe disagree: {a:?} vs {b:?}"),
    }
}
