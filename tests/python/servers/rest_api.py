"""A small REST API on FastAPI for the `runtime = "openapi"` tests.

    python rest_api.py PORT REQUESTS_LOG [REDIRECT_TARGET]

Listens on 127.0.0.1 only and serves the OpenAPI document FastAPI generates at /openapi.json.
Every request (method, path, raw query, headers, body) is appended to REQUESTS_LOG as one JSON
object per line, so a test can prove what the gateway sent. `/echo/...` (left out of the
generated document: tests describe it with documents of their own) answers with what it
received, to check parameter serialization. REDIRECT_TARGET is where `/redirect-away` sends the
client (a host the gateway must refuse).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Optional

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse, RedirectResponse
from pydantic import BaseModel

port, log_path = int(sys.argv[1]), sys.argv[2]
redirect_target = sys.argv[3] if len(sys.argv) > 3 else "http://example.invalid/"

app = FastAPI(title="Pet Store", version="1.2.3")


class NewPet(BaseModel):
    name: str
    tag: Optional[str] = None


class Pet(NewPet):
    id: int


class Owner(BaseModel):
    name: str
    pets: list[Pet] = []


pets: dict[int, Pet] = {1: Pet(id=1, name="Rex", tag="dog"), 2: Pet(id=2, name="Tom", tag="cat")}


@app.middleware("http")
async def record(request: Request, call_next):
    body = await request.body()
    entry = {
        "method": request.method,
        "path": request.url.path,
        "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
        "query": request.url.query,
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw},
        "body": body.decode("utf-8", "replace"),
    }
    with open(log_path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return await call_next(request)


@app.get("/pets", operation_id="listPets", summary="List pets", response_model=list[Pet])
def list_pets(limit: int = 10, tag: Optional[str] = None) -> list[Pet]:
    """Pets in the store, optionally only those with a tag."""
    found = [p for p in pets.values() if tag is None or p.tag == tag]
    return found[:limit]


@app.post("/pets", operation_id="createPet", summary="Add a pet", status_code=201, response_model=Pet)
def create_pet(pet: NewPet) -> Pet:
    new = Pet(id=max(pets) + 1, **pet.model_dump())
    pets[new.id] = new
    return new


@app.get("/pets/{pet_id}", operation_id="getPet", summary="One pet", response_model=Pet)
def get_pet(pet_id: int) -> Pet:
    if pet_id not in pets:
        raise HTTPException(status_code=404, detail=f"pet {pet_id} not found")
    return pets[pet_id]


@app.delete("/pets/{pet_id}", operation_id="deletePet", summary="Remove a pet", status_code=204)
def delete_pet(pet_id: int) -> Response:
    pets.pop(pet_id, None)
    return Response(status_code=204)


@app.get("/owners/{name}", operation_id="getOwner", response_model=Owner)
def get_owner(name: str) -> Owner:
    return Owner(name=name, pets=list(pets.values())[:1])


@app.get("/whoami", operation_id="whoAmI", summary="What credentials the API received")
def whoami(authorization: Optional[str] = Header(default=None)) -> dict:
    return {"authorization": authorization}


@app.get("/text", operation_id="plainText", response_class=PlainTextResponse)
def plain_text() -> str:
    return "plain words"


@app.get("/fail", operation_id="alwaysFails")
def fail() -> dict:
    raise HTTPException(status_code=500, detail="the database exploded")


@app.get("/big", operation_id="bigAnswer")
def big(kib: int = 1024) -> dict:
    return {"data": "x" * (kib * 1024)}


@app.get("/slow", operation_id="slowAnswer")
async def slow(seconds: float = 5) -> dict:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/redirect-away", operation_id="redirectAway")
def redirect_away() -> RedirectResponse:
    return RedirectResponse(redirect_target, status_code=302)


@app.get("/redirect-home", operation_id="redirectHome")
def redirect_home() -> RedirectResponse:
    return RedirectResponse("/pets/1", status_code=307)


@app.api_route("/echo/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def echo(rest: str, request: Request) -> dict:
    body = (await request.body()).decode("utf-8", "replace")
    return {
        "method": request.method,
        "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
        "query": request.url.query,
        "headers": {k: v for k, v in request.headers.items() if k.startswith("x-") or k == "cookie"},
        "content_type": request.headers.get("content-type"),
        "body": body,
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
