"""lmgolf.device's reading of /proc/cpuinfo: the first processor's fields, nothing from the others."""

from lmgolf.device import cpu_fields

CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512_bf16\n"
           "cpu MHz\t\t: 2600.000\n\nprocessor\t: 1\nmodel name\t: another\n")


def test_cpu_fields_are_the_first_processors_fields_stripped():
    fields = cpu_fields(CPUINFO)
    assert fields == {"processor": "0", "vendor_id": "AuthenticAMD", "model name": "AMD EPYC 9R14",
                      "flags": "fpu avx2 avx512_bf16", "cpu MHz": "2600.000"}


def test_cpu_fields_skip_lines_without_a_colon_and_are_empty_for_empty_text():
    assert cpu_fields("garbage line\nflags : avx2\n") == {"flags": "avx2"}
    assert cpu_fields("") == {}
