//! Invalid input is rejected with a stable error kind, never a panic.

mod common;

use std::io;

use common::{attrs, dir, file};
use lazyblock_flatten::{
    plan, Entry, ErrorKind, FileContent, FileId, Kind, Options, Segment, Timestamp, Tree,
};

fn tree() -> Tree {
    Tree::new(attrs(0o755), 0)
}

#[test]
fn bad_names() {
    let mut t = tree();
    for bad in [&b"a\0b"[..], b"", b"a//b", b".", b"x/..", &[b'n'; 256][..]] {
        let e = t.add(bad, file(1, 1, 0)).expect_err("must reject");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    t.add(vec![b'n'; 255], file(1, 1, 0))
        .expect("255 bytes is fine");
    assert_eq!(
        t.add(vec![b'n'; 255], file(1, 1, 0))
            .expect_err("dup")
            .kind(),
        ErrorKind::InvalidInput
    );
}

fn plan_err(t: &Tree) -> ErrorKind {
    plan(t, &Options::new([1; 16]))
        .expect_err("plan must fail")
        .kind()
}

#[test]
fn structural_errors() {
    let mut t = tree();
    t.add("a/b", file(1, 1, 0)).expect("add");
    assert_eq!(plan_err(&t), ErrorKind::InvalidInput, "missing parent");

    let mut t = tree();
    t.add("f", file(1, 1, 0)).expect("add");
    t.add("f/x", file(1, 1, 0)).expect("add");
    assert_eq!(plan_err(&t), ErrorKind::InvalidInput, "parent is a file");

    let mut t = tree();
    t.add("d", dir(0)).expect("add");
    t.add_hard_link("l", "d").expect("add");
    assert_eq!(plan_err(&t), ErrorKind::InvalidInput, "hard link to dir");

    let mut t = tree();
    t.add_hard_link("l", "nothing").expect("add");
    assert_eq!(plan_err(&t), ErrorKind::InvalidInput, "dangling hard link");

    let mut t = tree();
    t.add("f", file(1, 1, 0).with_inode_layer(3)).expect("add");
    assert_eq!(
        plan_err(&t),
        ErrorKind::InvalidInput,
        "inode layer above layer"
    );
}

#[test]
fn attribute_and_content_errors() {
    let cases: Vec<(Entry, ErrorKind)> = vec![
        (
            Entry::new(Kind::Dir, attrs(0o10755), 0),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(
                Kind::Dir,
                attrs(0o755).with_xattr("system.posix_acl_access", "x"),
                0,
            ),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(Kind::Dir, attrs(0o755).with_xattr("user.", "x"), 0),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(
                Kind::Dir,
                attrs(0o755).with_xattr("user.big", vec![0; 5000]),
                0,
            ),
            ErrorKind::TooLarge,
        ),
        (
            Entry::new(Kind::Symlink(Vec::new()), attrs(0o777), 0),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(Kind::Symlink(vec![b'a'; 4096]), attrs(0o777), 0),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(Kind::Symlink(b"a\0b".to_vec()), attrs(0o777), 0),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(
                Kind::CharDevice {
                    major: 5000,
                    minor: 0,
                },
                attrs(0o600),
                0,
            ),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(
                Kind::File(FileContent::sparse(
                    FileId(1),
                    10,
                    vec![Segment { offset: 5, len: 10 }],
                )),
                attrs(0o644),
                0,
            ),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(
                Kind::File(FileContent::sparse(
                    FileId(1),
                    100,
                    vec![
                        Segment { offset: 0, len: 50 },
                        Segment {
                            offset: 40,
                            len: 10,
                        },
                    ],
                )),
                attrs(0o644),
                0,
            ),
            ErrorKind::InvalidInput,
        ),
        (
            Entry::new(Kind::File(FileContent::hole(1 << 45)), attrs(0o644), 0),
            ErrorKind::TooLarge,
        ),
    ];
    for (i, (e, kind)) in cases.into_iter().enumerate() {
        let mut t = tree();
        t.add("x", e).expect("add");
        assert_eq!(plan_err(&t), kind, "case {i}");
    }
    let mut t = tree();
    let mut e = file(1, 1, 0);
    e.attrs.mtime = Timestamp::new(1 << 40, 0);
    t.add("x", e).expect("add");
    assert_eq!(plan_err(&t), ErrorKind::InvalidInput, "time out of range");
    let mut t = tree();
    let mut e = file(1, 1, 0);
    e.attrs.mtime = Timestamp::new(0, 1_000_000_000);
    t.add("x", e).expect("add");
    assert_eq!(
        plan_err(&t),
        ErrorKind::InvalidInput,
        "nanoseconds out of range"
    );

    let mut opts = Options::new([1; 16]);
    opts.chunk_size = 3 * 4096;
    assert_eq!(
        plan(&tree(), &opts).expect_err("bad chunk").kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn source_errors_are_io() {
    let mut t = tree();
    t.add("f", file(1, 10_000, 0)).expect("add");
    let mut failing =
        |_: FileId, _: u64, _: &mut [u8]| -> io::Result<()> { Err(io::Error::other("boom")) };
    let e = lazyblock_flatten::write_image(&t, &Options::new([1; 16]), &mut failing, io::sink())
        .expect_err("io");
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("boom"));
}
