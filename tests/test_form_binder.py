"""serving.multipart.FormBinder fills a multipart route's declared fields as FastAPI would: the
last value of a field, an empty value as absent, FastAPI's answers for a value of the wrong kind."""

from __future__ import annotations

import io

import pytest
from fastapi import File, Form, Request, UploadFile
from starlette.datastructures import FormData

from serving.errors import ApiError
from serving.multipart import MISSING_IMAGE, FormBinder


async def endpoint(
    request: Request,
    image: UploadFile | None = File(None),
    box: str | None = Form(None),
    k: str | None = Form(None),
):
    return None


def upload(name: str = "film.png") -> UploadFile:
    return UploadFile(io.BytesIO(b"\x89PNG"), filename=name)


def test_fields_take_the_last_value_and_an_empty_value_is_absent():
    request = object()
    film = upload()
    form = FormData([("image", film), ("box", "1,2,3,4"), ("box", "5,6,7,8"), ("k", "")])
    assert FormBinder(endpoint).bind(request, form) == {"request": request, "image": film, "box": "5,6,7,8", "k": None}
    assert FormBinder(endpoint).bind(request, FormData([])) == {
        "request": request,
        "image": None,
        "box": None,
        "k": None,
    }


def test_text_where_the_image_belongs_is_a_missing_image():
    with pytest.raises(ApiError) as caught:
        FormBinder(endpoint).bind(None, FormData([("image", upload()), ("image", "not a file")]))
    assert (caught.value.status, caught.value.reason, str(caught.value.message)) == (
        422,
        "missing_field",
        MISSING_IMAGE,
    )


def test_a_file_where_text_belongs_is_a_bad_request():
    with pytest.raises(ApiError) as caught:
        FormBinder(endpoint).bind(None, FormData([("box", upload("box.txt"))]))
    assert (caught.value.status, caught.value.reason) == (422, "bad_request")
    assert "body.box" in caught.value.message


def test_a_parameter_it_cannot_fill_is_refused_when_the_route_is_built():
    async def with_query(image: UploadFile | None = File(None), page: int = 1):
        return None

    with pytest.raises(TypeError, match="'page'"):
        FormBinder(with_query)
