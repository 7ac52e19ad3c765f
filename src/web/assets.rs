//! The playground's files, embedded in the binary: nothing is read from the disk at run
//! time, so no request path can reach a file that is not in this table.

/// One embedded file.
pub(super) struct Asset {
    pub(super) path: &'static str,
    pub(super) content_type: &'static str,
    pub(super) body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        path: "/static/app.js",
        content_type: JS,
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/static/style.css",
        content_type: CSS,
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        path: "/static/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/icon.svg"),
    },
    Asset {
        path: "/static/codemirror.js",
        content_type: JS,
        body: include_bytes!("../../web/vendor/codemirror/codemirror.js"),
    },
    Asset {
        path: "/static/codemirror.css",
        content_type: CSS,
        body: include_bytes!("../../web/vendor/codemirror/codemirror.css"),
    },
    Asset {
        path: "/static/python.js",
        content_type: JS,
        body: include_bytes!("../../web/vendor/codemirror/python.js"),
    },
    Asset {
        path: "/static/LICENSE.codemirror.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../web/vendor/codemirror/LICENSE"),
    },
];

/// The file at exactly `path` (no decoding, no normalising: `/static/../x` is not found).
pub(super) fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_paths_are_found() {
        assert!(find("/").is_some());
        assert!(find("/static/codemirror.js").is_some());
        for path in [
            "/static/../Cargo.toml",
            "/static/%2e%2e/Cargo.toml",
            "/static/",
            "/static//app.js",
            "/index.html",
            "//",
            "/STATIC/app.js",
        ] {
            assert!(find(path).is_none(), "{path}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // Every src and href of the page is one of ours.
        let page = std::str::from_utf8(find("/").unwrap().body).unwrap();
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let url = part.split('"').next().unwrap();
                assert!(find(url).is_some(), "{url} is not embedded");
            }
        }
        assert!(
            !page.contains("<script>") && !page.contains("style="),
            "no inline code"
        );
    }
}
