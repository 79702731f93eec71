"""Labs, their members and roles: the one home of "who may see and do what in which lab".

``models`` (Lab, Membership), ``rules`` (the predicates every app uses: views, DRF, admin and
templates), ``querysets`` (``visible_to(user)``: rows of the user's labs), ``current`` (the lab a
page shows) and ``context_processors`` (the header's labs, lab and role).
"""
