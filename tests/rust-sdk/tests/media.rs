//! A real client library (matrix-rust-sdk) uploads a file, then reads it back and asks for a
//! thumbnail, through the authenticated media endpoints it uses since Matrix 1.11.

use std::io::Cursor;

use diplomatie_rust_sdk_tests::{Backend, Server};
use matrix_sdk::{
    media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{events::room::MediaSource, media::Method, uint},
    Client,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_on_sqlite() {
    upload_download_and_thumbnail(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_on_postgres() {
    upload_download_and_thumbnail(Backend::Postgres).await;
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 90]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn upload_download_and_thumbnail(backend: Backend) {
    let server = Server::start(backend).await;
    server.register("alice").await;
    server.register("bob").await;
    let login = |user: &'static str| {
        let base = server.base.clone();
        async move {
            let client = Client::builder().homeserver_url(&base).build().await.expect("client");
            client.matrix_auth().login_username(user, "correct horse").send().await.expect("login");
            client
        }
    };
    let alice = login("alice").await;
    let bob = login("bob").await;

    let original = png(640, 400);
    let uploaded = alice.media().upload(&mime::IMAGE_PNG, original.clone(), None).await.expect("upload");
    assert!(uploaded.content_uri.as_str().starts_with("mxc://localhost/"));

    // Another user reads the file back, byte for byte.
    let source = MediaSource::Plain(uploaded.content_uri.clone());
    let file = MediaRequestParameters { source: source.clone(), format: MediaFormat::File };
    let bytes = bob.media().get_media_content(&file, false).await.expect("download");
    assert_eq!(bytes, original);

    // A cropped thumbnail of the requested size, and a scaled one keeping the aspect ratio.
    let crop = MediaThumbnailSettings::with_method(Method::Crop, uint!(96), uint!(96));
    let thumb = MediaRequestParameters { source: source.clone(), format: MediaFormat::Thumbnail(crop) };
    let bytes = bob.media().get_media_content(&thumb, false).await.expect("thumbnail");
    let dims = image::ImageReader::new(Cursor::new(&bytes)).with_guessed_format().unwrap().into_dimensions().unwrap();
    assert_eq!(dims, (96, 96));
    let scale = MediaThumbnailSettings::with_method(Method::Scale, uint!(320), uint!(240));
    let thumb = MediaRequestParameters { source, format: MediaFormat::Thumbnail(scale) };
    let bytes = bob.media().get_media_content(&thumb, false).await.expect("scaled thumbnail");
    let dims = image::ImageReader::new(Cursor::new(&bytes)).with_guessed_format().unwrap().into_dimensions().unwrap();
    assert_eq!(dims, (320, 200));
}
