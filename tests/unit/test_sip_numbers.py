"""Dial strings (sip/numbers.py) and the caller-ID headers (sip/identity.py), over many countries."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.identity import ANONYMOUS, Caller, asserted, from_addr, quoted, request_uri
from sip.numbers import DialFormat, dial_string, uri_user

# E.164 → (e164, +e164, national): national as the country dials it, its national prefix included
COUNTRIES = {
    "GB": ("+442079460958", "442079460958", "+442079460958", "02079460958"),
    "DE": ("+4930123456", "4930123456", "+4930123456", "030123456"),
    "CZ": ("+420601234567", "420601234567", "+420601234567", "601234567"),
    "SK": ("+421912123456", "421912123456", "+421912123456", "0912123456"),
    "US": ("+12015550123", "12015550123", "+12015550123", "2015550123"),
    "IT": ("+390612345678", "390612345678", "+390612345678", "0612345678"),  # the 0 is part of the number
    "FR": ("+33142685300", "33142685300", "+33142685300", "0142685300"),
    "RU": ("+74951234567", "74951234567", "+74951234567", "84951234567"),  # trunk prefix 8
    "HU": ("+3612345678", "3612345678", "+3612345678", "0612345678"),  # trunk prefix 06
    "AU": ("+61291234567", "61291234567", "+61291234567", "0291234567"),
    "JP": ("+819012345678", "819012345678", "+819012345678", "09012345678"),
    "PL": ("+48221234567", "48221234567", "+48221234567", "221234567"),  # no trunk prefix
    "NL": ("+31201234567", "31201234567", "+31201234567", "0201234567"),
    "IE": ("+353861234567", "353861234567", "+353861234567", "0861234567"),
    "ZA": ("+27211234567", "27211234567", "+27211234567", "0211234567"),
    "IL": ("+97225501234", "97225501234", "+97225501234", "025501234"),
    "AR": ("+5491123456789", "5491123456789", "+5491123456789", "01115" + "23456789"),  # mobile: 0 + area + 15
}


@pytest.mark.parametrize("region", sorted(COUNTRIES))
def test_every_format_in_many_countries(region: str) -> None:
    number, e164, plus, national = COUNTRIES[region]
    assert phonenumbers.region_code_for_number(phonenumbers.parse(number)) == region
    assert dial_string(number) == e164  # the default: today's behaviour
    assert dial_string(number, DialFormat.E164) == e164
    assert dial_string(number, DialFormat.PLUS_E164) == plus
    assert dial_string(number, DialFormat.NATIONAL) == national
    assert dial_string(number, "national", "9") == "9" + national  # an outside line
    assert dial_string(number, "+e164", "1234#") == "1234#" + plus  # a carrier's tech prefix


def test_without_plus_and_not_a_number() -> None:
    assert dial_string("442079460958", "+e164") == "+442079460958"
    assert dial_string("telgate", "national", "9") == "telgate"  # a from_user, not a number: as it is
    assert dial_string("+999123", "national") == "999123"  # no such country: the digits, unchanged


def test_a_hash_is_escaped_in_the_uri() -> None:
    assert uri_user("12#34*5") == "12%2334*5"
    assert request_uri("+420601234567", "pbx:5060", "e164", "77#") == "sip:77%23420601234567@pbx:5060"
    assert request_uri("+420601234567", "pbx", "+e164", "", True) == "sip:+420601234567@pbx;user=phone"


@given(st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)), st.sampled_from(list(DialFormat)))
def test_every_region_example_number_is_dialled_as_its_digits(region: str, fmt: DialFormat) -> None:
    example = phonenumbers.example_number(region)
    if example is None:
        return
    number = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    out = dial_string(number, fmt)
    assert out.lstrip("+").isdigit()
    if fmt is DialFormat.NATIONAL:
        assert out.endswith(phonenumbers.national_significant_number(example)[-4:])  # the subscriber digits stay
        assert phonenumbers.is_valid_number(phonenumbers.parse(out, region)), (region, number, out)
    else:
        assert out.lstrip("+") == number.lstrip("+")


def test_from_and_asserted_identity() -> None:
    caller = Caller("+442079460958", "Acme Ltd")
    assert from_addr(None, "telgate", None, "pbx") == "<sip:telgate@pbx>"  # today's From
    assert from_addr(None, "telgate", 'Say "hi"', "pbx") == '"Say \\"hi\\"" <sip:telgate@pbx>'
    assert from_addr(caller, "telgate", "Ignored", "pbx", "national") == '"Acme Ltd" <sip:02079460958@pbx>'
    assert from_addr(caller, "telgate", None, "pbx", "+e164", True) == '"Acme Ltd" <sip:+442079460958@pbx;user=phone>'
    assert from_addr(Caller("+442079460958"), "telgate", "Desk", "pbx") == '"Desk" <sip:442079460958@pbx>'
    withheld = Caller("+442079460958", "Acme", withheld=True)
    assert from_addr(withheld, "telgate", None, "pbx") == ANONYMOUS
    assert asserted(withheld, "telgate", None, "pbx", "+e164") == '"Acme" <sip:+442079460958@pbx>'
    assert quoted("a\\b") == '"a\\\\b"'
