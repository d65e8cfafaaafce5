"""Concurrent changes of one product or user take turns: every email's old value is the
previous committed value, and a thing is deleted (and its deletion emailed) once."""

from __future__ import annotations

import itertools
import threading

from sqlalchemy import select

from app.catalog.models import Product
from app.core.extensions import db
from app.events.models import Event
from app.notifications.models import Notification


def at_once(app, requests: list) -> list:
    """Send the requests from as many threads, released together; their answers."""
    barrier = threading.Barrier(len(requests))
    answers: list = [None] * len(requests)

    def send(index: int, request) -> None:
        client = app.test_client()
        barrier.wait()
        answers[index] = request(client)

    threads = [threading.Thread(target=send, args=item) for item in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def emails_to(app, recipient: str, sku: str) -> list[Notification]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(Notification)
                .join(Notification.event)
                .where(Notification.recipient == recipient, Event.sku == sku)
                .order_by(Notification.id)
            )
        )


def test_concurrent_price_changes_chain_in_the_emails(app, make):
    admins = [make.admin(email=f"admin{n}@example.com") for n in range(6)]
    make.product("shoe", price=100)
    prices = [1000 + n for n in range(len(admins))]

    def change(admin, price):
        return lambda client: client.put(
            "/api/products/shoe", json={"price": price}, headers=admin["headers"]
        )

    answers = at_once(app, [change(a, p) for a, p in zip(admins, prices, strict=True)])

    assert [answer.status_code for answer in answers] == [200] * len(admins)
    # Each admin's answer shows the price that admin set, not another's.
    assert [answer.json["price"] for answer in answers] == prices
    updates = emails_to(app, "admin0@example.com", "shoe")
    assert len(updates) == len(admins)
    chain = [(n.event.changes["price"]["old"], n.event.changes["price"]["new"]) for n in updates]
    assert chain[0][0] == 100
    assert all(earlier[1] == later[0] for earlier, later in itertools.pairwise(chain))
    with app.app_context():
        stored = db.session.scalar(select(Product.price).where(Product.sku == "shoe"))
    assert chain[-1][1] == stored
    assert sorted(new for _, new in chain) == prices


def test_concurrent_deletes_of_one_product_delete_and_email_once(app, make):
    admins = [make.admin(email=f"admin{n}@example.com") for n in range(3)]
    make.product("shoe")
    answers = at_once(
        app,
        [
            lambda client, a=admin: client.delete("/api/products/shoe", headers=a["headers"])
            for admin in admins * 2
        ],
    )
    assert sorted(answer.status_code for answer in answers) == [204] + [404] * 5
    for admin in admins:
        emails = emails_to(app, admin["email"], "shoe")
        deleted = [n for n in emails if n.event.type == "product.deleted"]
        assert len(deleted) == 1


def test_concurrent_deletes_of_one_user_answer_204_once(app, make, client):
    first, second = make.admin(email="a1@example.com"), make.admin(email="a2@example.com")
    reader = make.reader(email="reader@example.com")
    answers = at_once(
        app,
        [
            lambda c, a=admin: c.delete(f"/api/users/{reader['id']}", headers=a["headers"])
            for admin in (first, second, first, second)
        ],
    )
    assert sorted(answer.status_code for answer in answers) == [204, 404, 404, 404]
    assert client.get(f"/api/users/{reader['id']}", headers=first["headers"]).status_code == 404
