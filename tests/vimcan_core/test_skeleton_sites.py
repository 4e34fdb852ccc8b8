"""IMU site names as users write them."""

from vimcan_core.skeleton import IMU_SITE_NAMES, ImuSite


def test_site_from_name_accepts_the_spellings_users_write() -> None:
    for site, name in zip(ImuSite, IMU_SITE_NAMES):
        assert ImuSite.from_name(name) is site
        assert ImuSite.from_name(f" {name.replace('_', ' ').title()} ") is site
    assert ImuSite.from_name("left_lower_leg") is ImuSite.LEFT_LOWER_LEG
    assert ImuSite.from_name("left hand") is None
    assert ImuSite.from_name("") is None
