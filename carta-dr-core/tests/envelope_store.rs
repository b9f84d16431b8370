//! The envelope over real stores: `LocalStore` on a temporary directory (real files) and
//! `MemoryStore`, whole-object and streaming helpers, and damage found on read-back.

use std::sync::Arc;

use bytes::Bytes;
use carta_dr_backends::{LocalStore, MemoryStore};
use carta_dr_core::envelope::{
    get_opened, get_opened_stream, put_sealed, EnvelopeOptions, Key, SealedWriter,
};
use carta_dr_core::fuzzing::wal_like_data;
use carta_dr_core::{Error, PutOptions, Store, StoreExt, StorePath};
use futures::StreamExt;

fn stores() -> Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = LocalStore::open(dir.path()).expect("local store");
    vec![
        (Arc::new(local), Some(dir)),
        (Arc::new(MemoryStore::new()), None),
    ]
}

async fn collect(store: &dyn Store, path: &StorePath, key: Option<&Key>) -> Result<Vec<u8>, Error> {
    let mut s = get_opened_stream(store, path, key).await?;
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

#[tokio::test]
async fn whole_and_streaming_round_trips_on_every_store() {
    let data = wal_like_data(3 * 65536 + 17, 5);
    let key = Arc::new(Key::from_bytes([0x42; 32]));
    for (store, _dir) in stores() {
        for k in [None, Some(key.clone())] {
            let opts = EnvelopeOptions {
                key: k.clone(),
                ..EnvelopeOptions::zstd(3).with_chunk_size(65536)
            };
            let kr = k.as_deref();
            let p = StorePath::new(format!("obj/whole-{}", kr.is_some())).unwrap();
            let st = put_sealed(&*store, &p, &data, &opts, PutOptions::create())
                .await
                .unwrap();
            assert_eq!(st.raw_len, data.len() as u64);
            assert_eq!(st.crc32c, crc32c::crc32c(&data));
            assert_eq!(store.head(&p).await.unwrap().size, st.stored_len);
            assert_eq!(get_opened(&*store, &p, kr).await.unwrap(), data, "{store}");
            assert_eq!(collect(&*store, &p, kr).await.unwrap(), data, "{store}");
            // Create-only is passed through.
            let again = put_sealed(&*store, &p, &data, &opts, PutOptions::create()).await;
            assert!(
                matches!(again, Err(Error::AlreadyExists { .. })),
                "{again:?}"
            );

            let q = StorePath::new(format!("obj/stream-{}", kr.is_some())).unwrap();
            let mut w = SealedWriter::new(&*store, &q, &opts, PutOptions::create())
                .await
                .unwrap();
            for piece in data.chunks(10_000) {
                w.write(piece).await.unwrap();
            }
            let st2 = w.finish().await.unwrap();
            assert_eq!(st2.raw_len, st.raw_len);
            assert_eq!(st2.crc32c, st.crc32c);
            assert_eq!(get_opened(&*store, &q, kr).await.unwrap(), data);
            assert_eq!(collect(&*store, &q, kr).await.unwrap(), data);
        }
    }
}

#[tokio::test]
async fn aborted_streaming_write_leaves_nothing() {
    for (store, _dir) in stores() {
        let p = StorePath::new("obj/aborted").unwrap();
        let mut w = SealedWriter::new(
            &*store,
            &p,
            &EnvelopeOptions::default(),
            PutOptions::create(),
        )
        .await
        .unwrap();
        w.write(&[1u8; 3 << 20]).await.unwrap();
        w.abort().await.unwrap();
        assert!(!store.exists(&p).await.unwrap(), "{store}");
    }
}

#[tokio::test]
async fn damage_in_the_store_is_reported_with_path_and_chunk() {
    let data = wal_like_data(5 * 4096, 6);
    let opts = EnvelopeOptions::zstd(1).with_chunk_size(4096);
    for (store, _dir) in stores() {
        let p = StorePath::new("wal/000000010000000000000003").unwrap();
        put_sealed(&*store, &p, &data, &opts, PutOptions::overwrite())
            .await
            .unwrap();
        let mut sealed = store.get_bytes(&p).await.unwrap().to_vec();
        let l = carta_dr_core::fuzzing::layout(&sealed).unwrap();
        sealed[l.chunks[3].start + 40] ^= 0x10;
        store
            .put(&p, Bytes::from(sealed.clone()), PutOptions::overwrite())
            .await
            .unwrap();
        for r in [
            get_opened(&*store, &p, None).await,
            collect(&*store, &p, None).await,
        ] {
            match r {
                Err(Error::Corrupt { path, chunk, .. }) => {
                    assert_eq!(path, p.as_str());
                    assert_eq!(chunk, Some(3));
                }
                other => panic!("{store}: {:?}", other.map(|v| v.len())),
            }
        }
        // Truncated in the store: the stream yields the verified chunks, then fails.
        store
            .put(
                &p,
                Bytes::from(sealed[..l.chunks[2].end].to_vec()),
                PutOptions::overwrite(),
            )
            .await
            .unwrap();
        let mut s = get_opened_stream(&*store, &p, None).await.unwrap();
        let mut good = 0;
        let err = loop {
            match s.next().await {
                Some(Ok(b)) => good += b.len(),
                Some(Err(e)) => break e,
                None => panic!("{store}: truncated object ended cleanly"),
            }
        };
        assert_eq!(good, 3 * 4096);
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
