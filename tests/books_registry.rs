//! The entity registry: stable ids across reopen, torn tails, corruption.

use std::io::Write;
use std::path::PathBuf;

use bursar::books::registry::{EntityRegistry, RegistryError, REGISTRY_FILE};
use bursar::ledger::{EntityId, EntityKind};

fn temp_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("bursar-books-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn ids_are_stable_across_reopen_and_never_reused() {
    let dir = temp_dir("registry-stable");
    let mut r = EntityRegistry::open(&dir).unwrap();
    assert!(r.is_empty());
    let acme = r.id_for(EntityKind::Customer, "acme").unwrap();
    let search = r.id_for(EntityKind::Team, "search").unwrap();
    // The same name under another kind is another entity.
    let acme_team = r.id_for(EntityKind::Team, "acme").unwrap();
    let key = r.id_for(EntityKind::Key, "search-prod").unwrap();
    assert_eq!(
        [acme, search, acme_team, key],
        [EntityId(0), EntityId(1), EntityId(2), EntityId(3)]
    );
    assert_eq!(r.id_for(EntityKind::Customer, "acme").unwrap(), acme);
    drop(r);
    let mut r = EntityRegistry::open(&dir).unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r.lookup(EntityKind::Team, "search"), Some(search));
    assert_eq!(r.lookup(EntityKind::Key, "nope"), None);
    assert_eq!(r.name_of(key), Some((EntityKind::Key, "search-prod")));
    assert_eq!(r.name_of(EntityId(4)), None);
    // New ids continue after the last one.
    assert_eq!(
        r.id_for(EntityKind::Provider, "openai").unwrap(),
        EntityId(4)
    );
    let text = std::fs::read_to_string(dir.join(REGISTRY_FILE)).unwrap();
    assert_eq!(
        text,
        [
            line("0\tcustomer\tacme"),
            line("1\tteam\tsearch"),
            line("2\tteam\tacme"),
            line("3\tkey\tsearch-prod"),
            line("4\tprovider\topenai"),
        ]
        .concat()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn names_with_tabs_or_newlines_are_refused() {
    let dir = temp_dir("registry-names");
    let mut r = EntityRegistry::open(&dir).unwrap();
    let long = "x".repeat(bursar::books::registry::ENTITY_NAME_BYTES_MAX + 1);
    for bad in ["", "a\tb", "a\nb", "a\rb", &long] {
        assert!(
            matches!(
                r.id_for(EntityKind::Key, bad),
                Err(RegistryError::BadName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(r.is_empty());
    assert_eq!(
        std::fs::read(dir.join(REGISTRY_FILE)).unwrap(),
        Vec::<u8>::new()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_last_line_is_cut_and_its_id_assigned_again() {
    let dir = temp_dir("registry-torn");
    let mut r = EntityRegistry::open(&dir).unwrap();
    r.id_for(EntityKind::Customer, "acme").unwrap();
    drop(r);
    let path = dir.join(REGISTRY_FILE);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"1\tteam\tsea").unwrap();
    drop(f);
    let mut r = EntityRegistry::open(&dir).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        line("0\tcustomer\tacme")
    );
    assert_eq!(r.id_for(EntityKind::Team, "other").unwrap(), EntityId(1));
    drop(r);
    let r = EntityRegistry::open(&dir).unwrap();
    assert_eq!(r.lookup(EntityKind::Team, "other"), Some(EntityId(1)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_malformed_complete_line_is_an_error_naming_file_and_line() {
    let cases: [(&[u8], &str); 7] = [
        (b"0\tcustomer\tacme\n1\tteam\n", "expected"),
        (b"0\tcustomer\tacme\nx\tteam\tsearch\n", "not a number"),
        (b"0\tcustomer\tacme\n2\tteam\tsearch\n", "id 1 was expected"),
        (b"0\tcustomer\tacme\n1\twizard\tsearch\n", "unknown kind"),
        (b"0\tcustomer\tacme\n1\tcustomer\tacme\n", "twice"),
        (b"0\tcustomer\tacme\n\n1\tteam\tsearch\n", "empty line"),
        (b"0\tcustomer\tacme\n1\tteam\t\xff\n", "UTF-8"),
    ];
    for (i, (text, why)) in cases.iter().enumerate() {
        let dir = temp_dir(&format!("registry-corrupt-{i}"));
        std::fs::write(dir.join(REGISTRY_FILE), text).unwrap();
        let err = EntityRegistry::open(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RegistryError::Corrupt { line: 2, .. }),
            "{:?}: {msg}",
            String::from_utf8_lossy(text)
        );
        assert!(msg.contains(REGISTRY_FILE), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(
            msg.contains(why),
            "{:?}: {msg}",
            String::from_utf8_lossy(text)
        );
        // Nothing was cut from a corrupt file.
        assert_eq!(std::fs::read(dir.join(REGISTRY_FILE)).unwrap(), *text);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A registry line with its checksum, as the registry writes it.
fn line(fields: &str) -> String {
    format!("{fields}\t{:08x}\n", crc32c::crc32c(fields.as_bytes()))
}

#[test]
fn a_damaged_name_is_caught_by_its_checksum_not_read_as_another_entity() {
    let dir = temp_dir("registry-flip");
    let mut r = EntityRegistry::open(&dir).unwrap();
    r.id_for(EntityKind::Key, "key-a").unwrap();
    r.id_for(EntityKind::Key, "key-b").unwrap();
    drop(r);
    let path = dir.join(REGISTRY_FILE);
    let good = std::fs::read(&path).unwrap();
    // One bit: "key-a" becomes "key-c", a valid name of another key.
    let at = good.windows(5).position(|w| w == b"key-a").unwrap() + 4;
    let mut bad = good.clone();
    bad[at] ^= 0b10;
    assert_eq!(&bad[at - 4..at + 1], b"key-c");
    std::fs::write(&path, &bad).unwrap();
    let err = EntityRegistry::open(&dir).unwrap_err();
    assert!(
        matches!(err, RegistryError::Corrupt { line: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");
    // The read-only check says the same and changes nothing.
    assert!(EntityRegistry::inspect(&dir).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), bad);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_older_builds_lines_without_checksums_are_read_and_rewritten_with_them() {
    let dir = temp_dir("registry-upgrade");
    let path = dir.join(REGISTRY_FILE);
    std::fs::write(&path, "0\tcustomer\tacme\n1\tteam\tsearch\n").unwrap();
    let file = EntityRegistry::inspect(&dir).unwrap();
    assert_eq!(file.unchecked, 2);
    assert_eq!(file.names.len(), 2);
    let mut r = EntityRegistry::open(&dir).unwrap();
    assert_eq!(r.lookup(EntityKind::Team, "search"), Some(EntityId(1)));
    let want = [line("0\tcustomer\tacme"), line("1\tteam\tsearch")].concat();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    // Appends continue after the rewritten file.
    assert_eq!(r.id_for(EntityKind::Key, "k").unwrap(), EntityId(2));
    drop(r);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        [want, line("2\tkey\tk")].concat()
    );
    assert_eq!(EntityRegistry::inspect(&dir).unwrap().unchecked, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
