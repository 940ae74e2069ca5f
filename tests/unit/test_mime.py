"""Mime-type patterns and sniffing: the original's validator tests (reference 8.9) ported, plus
the deliberate changes (OR between positive items, empty items ignored) and Go glob details."""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading

import magic
import pytest

from downloader.fetching import mime

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def matches(glob: str, mime_type: str) -> bool:
    return mime.parse_pattern(glob).check(mime_type) is None


# --- the original's validator_test.go ---------------------------------------------------


class TestWhitelist:
    def test_jpeg_passes_a_jpeg_only_pattern(self) -> None:
        found = mime.sniff(read("load-test.jpg"))
        assert found == "image/jpeg"
        assert mime.parse_pattern("image/jpeg").check(found) is None


class TestBlacklistOnly:
    def test_jpeg_passes_when_only_other_types_are_negated(self) -> None:
        found = mime.sniff(read("load-test.jpg"))
        assert found == "image/jpeg"
        assert mime.parse_pattern("!image/vnd.adobe.photoshop,!image/png").check(found) is None


class TestImageSmallerThanThreshold:
    def test_a_png_shorter_than_the_sniff_window_is_still_detected_and_refused(self) -> None:
        data = read("tiny.png")
        assert len(data) < mime.SNIFF_BYTES
        found = mime.sniff(data)
        assert found == "image/png"
        assert (
            mime.parse_pattern("!image/png").check(found)
            == "Expected mime-type not to be (image/png) found - (image/png)"
        )


class TestPatternValidation:
    @pytest.mark.parametrize("pattern", ["[]a]", "\\"])
    def test_the_originals_invalid_patterns_are_refused(self, pattern: str) -> None:
        with pytest.raises(mime.InvalidPattern) as info:
            mime.parse_pattern(pattern)
        assert info.value.item == pattern

    @pytest.mark.parametrize(
        "pattern", ["", "image/*", "!application/xml", "!image/vnd.adobe.photoshop,image/*"]
    )
    def test_the_originals_valid_patterns_are_accepted(self, pattern: str) -> None:
        mime.parse_pattern(pattern)


class TestCheck:
    def test_a_negated_item_refuses_its_own_type(self) -> None:
        pattern = mime.parse_pattern("!image/vnd.adobe.photoshop")
        assert (
            pattern.check("image/vnd.adobe.photoshop")
            == "Expected mime-type not to be (image/vnd.adobe.photoshop) found - (image/vnd.adobe.photoshop)"
        )
        assert pattern.check("image/jpeg") is None


# --- list semantics (the original's AND bug fixed) ----------------------------------------


class TestListSemantics:
    def test_several_positive_items_are_alternatives(self) -> None:
        pattern = mime.parse_pattern("image/jpeg,image/png")
        assert pattern.check("image/jpeg") is None
        assert pattern.check("image/png") is None
        assert pattern.check("image/gif") == (
            "Expected mime-type to be (image/jpeg or image/png), found (image/gif)"
        )

    def test_a_single_positive_item_reads_as_in_the_original(self) -> None:
        assert (
            mime.parse_pattern("image/jpeg").check("image/png")
            == "Expected mime-type to be (image/jpeg), found (image/png)"
        )

    def test_every_negated_item_must_hold_and_the_first_failure_is_reported(self) -> None:
        pattern = mime.parse_pattern("!image/*,!image/png")
        assert pattern.check("application/pdf") is None
        assert pattern.check("image/png") == "Expected mime-type not to be (image/*) found - (image/png)"
        pattern = mime.parse_pattern("!image/gif,!image/png")
        assert pattern.check("image/png") == "Expected mime-type not to be (image/png) found - (image/png)"
        assert pattern.check("image/gif") == "Expected mime-type not to be (image/gif) found - (image/gif)"

    def test_negations_are_checked_before_positive_items(self) -> None:
        pattern = mime.parse_pattern("image/*,!image/vnd.adobe.photoshop")
        assert pattern.check("image/jpeg") is None
        assert pattern.check("image/vnd.adobe.photoshop") == (
            "Expected mime-type not to be (image/vnd.adobe.photoshop) found - (image/vnd.adobe.photoshop)"
        )
        assert pattern.check("text/html") == "Expected mime-type to be (image/*), found (text/html)"

    def test_the_intended_idiom_of_the_original_still_works(self) -> None:
        pattern = mime.parse_pattern("!image/vnd.adobe.photoshop,image/*")
        assert pattern.check("image/png") is None
        assert pattern.check("image/vnd.adobe.photoshop") is not None
        assert pattern.check("application/pdf") is not None

    @pytest.mark.parametrize("pattern", ["image/jpeg,", ",image/jpeg", "image/jpeg,,", " , image/jpeg , "])
    def test_empty_items_are_ignored(self, pattern: str) -> None:
        parsed = mime.parse_pattern(pattern)
        assert parsed.positives == ("image/jpeg",)
        assert parsed.negatives == ()
        assert parsed.check("image/jpeg") is None
        assert parsed.check("image/png") is not None

    def test_empty_items_between_alternatives_are_ignored(self) -> None:
        parsed = mime.parse_pattern("image/jpeg,,image/png")
        assert parsed.positives == ("image/jpeg", "image/png")
        assert parsed.check("image/png") is None

    @pytest.mark.parametrize("pattern", ["", ",", " , ,", "!"])
    def test_a_pattern_without_items_accepts_everything(self, pattern: str) -> None:
        parsed = mime.parse_pattern(pattern)
        assert parsed.positives == parsed.negatives == ()
        for found in ("image/png", "application/x-empty", "text/html", ""):
            assert parsed.check(found) is None

    def test_items_are_trimmed_and_kept_as_written(self) -> None:
        parsed = mime.parse_pattern("  image/jpeg , !image/vnd.adobe.photoshop ,image/p?g ")
        assert parsed.positives == ("image/jpeg", "image/p?g")
        assert parsed.negatives == ("image/vnd.adobe.photoshop",)

    def test_only_negations_apply_when_there_is_no_positive_item(self) -> None:
        pattern = mime.parse_pattern("!text/html")
        assert pattern.check("application/octet-stream") is None
        assert pattern.check("text/html") is not None

    def test_messages_name_mime_type_which_clients_look_for(self) -> None:
        for message in (
            mime.parse_pattern("image/png").check("image/gif"),
            mime.parse_pattern("!image/gif").check("image/gif"),
        ):
            assert message is not None
            assert "mime-type" in message

    def test_parsed_patterns_are_values(self) -> None:
        assert mime.parse_pattern("image/*, !image/png") == mime.parse_pattern("image/*,!image/png")
        assert hash(mime.parse_pattern("image/*")) == hash(mime.parse_pattern(" image/* "))
        assert mime.parse_pattern("image/*") != mime.parse_pattern("!image/*")

    def test_a_pattern_can_be_built_from_its_items(self) -> None:
        pattern = mime.MimePattern(positives=("image/*",), negatives=("image/png",))
        assert pattern.check("image/gif") is None
        assert pattern.check("image/png") is not None
        with pytest.raises(mime.InvalidPattern) as info:
            mime.MimePattern(positives=(), negatives=("[",))
        assert info.value.item == "!["


# --- Go filepath.Match semantics ------------------------------------------------------------


class TestGlob:
    @pytest.mark.parametrize(
        ("glob", "mime_type", "expected"),
        [
            # `*` is any run of characters except `/`
            ("image/*", "image/png", True),
            ("image/*", "image/svg+xml", True),
            ("image/*", "image/", True),
            ("image/*", "image/png/x", False),
            ("image/*", "imagex/png", False),
            ("*", "image/png", False),
            ("*", "application", True),
            ("*/*", "image/png", True),
            ("*/*", "image", False),
            ("**/png", "image/png", True),
            ("*/*+xml", "image/svg+xml", True),
            ("*/*+xml", "image/png", False),
            ("*/vnd.*", "image/vnd.adobe.photoshop", True),
            # `?` is one character except `/`
            ("image/?ng", "image/png", True),
            ("image/?ng", "image/ng", False),
            ("image/?ng", "image/pnng", False),
            ("image?png", "image/png", False),
            ("image/???", "image/gif", True),
            # classes, ranges, negation
            ("image/[jp]*", "image/jpeg", True),
            ("image/[jp]*", "image/png", True),
            ("image/[jp]*", "image/gif", False),
            ("image/[a-h]if", "image/gif", True),
            ("image/[a-h]if", "image/tif", False),
            ("image/[^p]ng", "image/png", False),
            ("image/[^p]ng", "image/xng", True),
            ("image/[^a-o]ng", "image/png", True),
            ("image/[a-cx-z]", "image/y", True),
            ("image/[a-cx-z]", "image/m", False),
            ("image/[z-a]", "image/m", False),  # a reversed range is valid and matches nothing
            ("image/[^z-a]", "image/m", True),
            ("image[/]png", "image/png", True),  # unlike `*` and `?`, Go lets a class match `/`
            ("image[^x]png", "image/png", True),
            ("image/[*]", "image/*", True),  # no wildcards inside a class
            ("image/[*]", "image/png", False),
            # escapes, also inside classes
            ("image/\\*", "image/*", True),
            ("image/\\*", "image/png", False),
            ("image/\\?ng", "image/png", False),
            ("image/p\\ng", "image/png", True),
            ("image/[\\]]", "image/]", True),
            ("image/[\\-]", "image/-", True),
            ("image/[\\^a]", "image/^", True),
            ("image/[a\\-c]", "image/b", False),
            ("image/[a\\-c]", "image/-", True),
            ("image/\\[png]", "image/[png]", True),
            # everything else is literal, regular-expression characters included
            ("image/svg+xml", "image/svg+xml", True),
            ("image/svg+xml", "image/svggxml", False),
            ("image/x.y", "image/xzy", False),
            ("image/(png|gif)", "image/gif", False),
            ("text/x-c$", "text/x-c$", True),
            ("image/png]", "image/png]", True),
            # whole-string match only
            ("image/png", "image/pngx", False),
            ("image/png", "ximage/png", False),
            ("png", "image/png", False),
            ("image/png", "IMAGE/PNG", False),
        ],
    )
    def test_glob(self, glob: str, mime_type: str, expected: bool) -> None:
        assert matches(glob, mime_type) is expected
        # the same glob negated gives the opposite verdict
        assert matches("!" + glob, mime_type) is not expected

    @pytest.mark.parametrize(
        "glob",
        [
            "[]a]",
            "\\",
            "image/\\",
            "[",
            "image/[",
            "image/[a",
            "image/[a-",
            "image/[a-]",
            "image/[-a]",
            "image/[]",
            "image/[^]",
            "image/[^",
            "image/[a\\]",
            "image/[\\",
            "image/[a-\\",
        ],
    )
    def test_bad_globs_are_refused(self, glob: str) -> None:
        with pytest.raises(mime.InvalidPattern) as info:
            mime.parse_pattern(glob)
        assert info.value.item == glob
        with pytest.raises(mime.InvalidPattern) as info:
            mime.parse_pattern("!" + glob)
        assert info.value.item == "!" + glob


class TestInvalidPattern:
    def test_message_quotes_the_item_as_go_does(self) -> None:
        with pytest.raises(mime.InvalidPattern) as info:
            mime.parse_pattern("[]a]")
        assert str(info.value) == 'Invalid MimeType Pattern, "[]a]"'

    def test_backslash_is_escaped_in_the_message(self) -> None:
        with pytest.raises(mime.InvalidPattern) as info:
            mime.parse_pattern("\\")
        assert str(info.value) == 'Invalid MimeType Pattern, "\\\\"'

    def test_quotes_and_control_characters_are_escaped(self) -> None:
        with pytest.raises(mime.InvalidPattern) as info:
            mime.parse_pattern('a"\t\x01é[')
        assert str(info.value) == 'Invalid MimeType Pattern, "a\\"\\t\\x01é["'

    def test_the_first_invalid_item_in_written_order_is_reported_trimmed(self) -> None:
        with pytest.raises(mime.InvalidPattern) as info:
            mime.parse_pattern("image/*, !image/[ ,[]a],\\")
        assert info.value.item == "!image/["
        assert str(info.value) == 'Invalid MimeType Pattern, "!image/["'

    def test_it_is_a_value_error(self) -> None:
        assert issubclass(mime.InvalidPattern, ValueError)


# --- sniffing ------------------------------------------------------------------------------


class TestSniff:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("sample-1.jpg", "image/jpeg"),
            ("load-test.jpg", "image/jpeg"),
            ("tiny.png", "image/png"),
            ("tiny.bmp", "image/bmp"),
            ("tiny.pdf", "application/pdf"),
        ],
    )
    def test_fixtures(self, name: str, expected: str) -> None:
        assert mime.sniff(read(name)) == expected

    def test_an_empty_body_is_application_x_empty(self) -> None:
        assert mime.sniff(b"") == "application/x-empty"

    def test_only_the_first_kibibyte_is_looked_at(self) -> None:
        assert mime.SNIFF_BYTES == 1024
        data = b"A" * mime.SNIFF_BYTES + bytes(range(256)) * 8
        # libmagic given everything would call this binary
        assert magic.from_buffer(data, mime=True) == "application/octet-stream"
        assert mime.sniff(data) == "text/plain"

    def test_several_threads_sniff_at_once(self) -> None:
        cases = [
            (read("sample-1.jpg"), "image/jpeg"),
            (read("tiny.png"), "image/png"),
            (read("tiny.bmp"), "image/bmp"),
            (read("tiny.pdf"), "application/pdf"),
            (b"", "application/x-empty"),
        ] * 40
        start = threading.Barrier(8)

        def sniff_all(offset: int) -> list[tuple[str, str]]:
            start.wait()
            return [(mime.sniff(data), want) for data, want in cases[offset:] + cases[:offset]]

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(sniff_all, range(8)))
        for pairs in results:
            assert all(got == want for got, want in pairs), pairs
