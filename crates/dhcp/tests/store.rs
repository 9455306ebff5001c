//! The lease store: what is committed is loaded back after a reopen (and a server restored from
//! it answers as before); a missing directory or a file that is not a store is a clear error.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use ipshadow_dhcp::{ClientKey, Lease, LeaseChange, LeaseStore, Role, StoreError};

fn lease(last: u8, expires: u64) -> Lease {
    Lease {
        ip: Ipv4Addr::new(10, 0, 0, last),
        client: ClientKey::Mac([2, 0, 0, 0, 0, last]),
        vm: Some(format!("vm-{last}")),
        expires,
        migration: (last == 10).then_some((7, Role::Destination)),
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ipshadow-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn committed_leases_survive_a_reopen() {
    let dir = temp("reopen");
    let path = dir.join("leases.redb");
    {
        let store = LeaseStore::open(&path).unwrap();
        assert!(store.load().unwrap().is_empty());
        let changes: Vec<LeaseChange> = (10..20).map(|i| LeaseChange::Put(lease(i, 1000 + u64::from(i)))).collect();
        store.commit(&changes).unwrap();
        store
            .commit(&[LeaseChange::Delete {
                ip: Ipv4Addr::new(10, 0, 0, 11),
                client: ClientKey::Mac([2, 0, 0, 0, 0, 11]),
            }])
            .unwrap();
        store.commit(&[LeaseChange::Put(lease(12, 5000))]).unwrap();
    }
    let store = LeaseStore::open(&path).unwrap();
    let mut loaded = store.load().unwrap();
    loaded.sort_by_key(|l| l.ip);
    assert_eq!(loaded.len(), 9);
    assert_eq!(loaded[0], lease(10, 1010));
    assert_eq!(loaded.iter().find(|l| l.ip == Ipv4Addr::new(10, 0, 0, 12)).unwrap().expires, 5000);
    assert!(loaded.iter().all(|l| l.ip != Ipv4Addr::new(10, 0, 0, 11)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_directory_or_a_foreign_file_is_a_clear_error() {
    let dir = temp("errors");
    let missing = dir.join("no-such-dir").join("leases.redb");
    let err = LeaseStore::open(&missing).err().unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("no-such-dir"), "names the path: {err}");
    let foreign = dir.join("not-a-store.redb");
    std::fs::write(&foreign, vec![0x42; 8192]).unwrap();
    let err = LeaseStore::open(&foreign).err().unwrap();
    assert!(err.to_string().contains("not-a-store.redb"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The store names every client and its address: owner-only from creation, whatever the umask.
#[test]
fn a_new_store_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("mode");
    let path = dir.join("leases.redb");
    let store = LeaseStore::open(&path).unwrap();
    store.commit(&[LeaseChange::Put(lease(10, 2_000))]).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    drop(store);
    assert_eq!(LeaseStore::open(&path).unwrap().load().unwrap().len(), 1, "reopened with its lease");
    let _ = std::fs::remove_dir_all(&dir);
}
