"""GET /v1/models through the SDK, with full and model-scoped keys."""

from _support import DEMO_MODELS, QWEN


def test_models_list_has_both_demo_models(client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert sorted(ids) == sorted(DEMO_MODELS), ids
    for m in page.data:
        assert m.object == "model"


def test_scoped_key_lists_only_its_models(admin, make_client, tenant):
    key = admin.create_key(tenant.name, models=[QWEN], name="scoped")
    scoped = make_client(key["key"])
    ids = [m.id for m in scoped.models.list().data]
    assert ids == [QWEN]
    # The tenant's unscoped key still sees everything.
    assert sorted(m.id for m in tenant.client.models.list().data) == sorted(DEMO_MODELS)
